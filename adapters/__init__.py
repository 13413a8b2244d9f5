"""Framework adapters (LangChain, LangGraph, MCP), installed as ``optical_memory.adapters``.

They use the public API only. The implementations are tracked in their own issue; this package exists
so the layout and the install mapping (``adapters/`` -> ``optical_memory.adapters``) are in place.
"""
