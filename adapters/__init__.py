"""Framework adapters, installed as ``optical_memory.adapters``; each uses the public API only.

* ``optical_memory.adapters.langchain``: ``OpticalMemoryRetriever`` (langchain-core ``BaseRetriever``;
  ``pip install 'optical-memory[langchain]'``).

Chat-message history, the LangGraph store and the MCP server are not written yet (the adapters issue).
"""
