"""Stage 1, data: catalogues in (CSV, JSONL, MM-IMDb), validated records, the prepared dataset (shards, split,
genres), posters decoded, the demo catalogue and the feature caches. Imports only the shared modules.
"""
