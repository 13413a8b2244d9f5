"""Framework adapters, installed as ``optical_memory.adapters``; each uses the public API only.

* ``optical_memory.adapters.langchain``: ``OpticalMemoryRetriever`` (langchain-core ``BaseRetriever``) and
  ``OpticalChatMessageHistory`` (``BaseChatMessageHistory``); ``pip install 'optical-memory[langchain]'``.

The LangGraph store and the MCP server are not written yet (the adapters issue).
"""
