"""Framework adapters, installed as ``optical_memory.adapters``; each uses the public API only.

* ``optical_memory.adapters.langchain``: ``OpticalMemoryRetriever`` (langchain-core ``BaseRetriever``) and
  ``OpticalChatMessageHistory`` (``BaseChatMessageHistory``); ``pip install 'optical-memory[langchain]'``.
* ``optical_memory.adapters.langgraph``: ``OpticalMemoryStore`` (LangGraph ``BaseStore``: namespaces as
  scopes, ttl on the forgetting ladder); ``pip install 'optical-memory[langgraph]'``.
* ``optical_memory.adapters.mcp``: an MCP server (``make_server``, ``serve``; the ``optical-memory mcp``
  command) with tools remember, search_memory, recall_memory, build_context, forget and page-image
  resources; ``pip install 'optical-memory[mcp]'``.
"""
