"""Verifiable reasoning tasks that write prompt / cold-start chat JSONL files."""
