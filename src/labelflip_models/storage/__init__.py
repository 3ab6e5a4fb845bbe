"""Files written safely: atomic multi-file writes (`atomic`), file locks with a timeout (`locks`), the cache root
(`cache_dir`) and output directories checked before any work (`out_dir`). Knows nothing of models or attacks."""
