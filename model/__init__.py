"""DeepSeek-OCR in PyTorch, installed as ``optical_memory.model``. Knows nothing of the store.

The implementation is tracked in its own issue; this package exists so the layout and the install
mapping (``model/`` -> ``optical_memory.model``) are in place and tested.
"""
