"""Run configs: plain Python files with get_config() (big_vision style)."""
