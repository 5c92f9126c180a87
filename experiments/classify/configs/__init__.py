"""The classify study's presets: one `get_config(arg)` per file; `:tiny` shrinks any of them."""
