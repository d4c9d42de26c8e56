"""Merge of split-KV partial results through their lse (SPEC §3.4)."""
