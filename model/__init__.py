"""DeepSeek-OCR in clean PyTorch, installed as ``optical_memory.model``. Knows nothing of the store.

    from optical_memory.model import from_pretrained

    ocr = from_pretrained("DeepSeek-OCR", dtype=torch.bfloat16, device="cpu")  # a local folder
    vision = ocr.encode(pages, mode="small")  # per page: (111, 1280) vision tokens
    texts = ocr.generate(vision, "<image>\\nFree OCR.")

The folder is the official ``deepseek-ai/DeepSeek-OCR`` download; nothing is fetched at run time.
``optical_memory.model.testing.write_checkpoint`` writes a small random one in the same layout.
"""

from .config import ClipConfig, DecoderConfig, OCRConfig, SamConfig
from .generation import GenerateOutput, GenerationConfig
from .loading import CheckpointError, from_pretrained
from .ocr import DEFAULT_PROMPT, DeepseekOCR
from .preprocess import MODES, Mode, count_image_tokens

__all__ = [
    "DEFAULT_PROMPT",
    "MODES",
    "CheckpointError",
    "ClipConfig",
    "DecoderConfig",
    "DeepseekOCR",
    "GenerateOutput",
    "GenerationConfig",
    "Mode",
    "OCRConfig",
    "SamConfig",
    "count_image_tokens",
    "from_pretrained",
]
