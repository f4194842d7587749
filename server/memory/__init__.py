"""Conversation memory: token budgets, context assembly, summaries, key facts and embeddings."""
