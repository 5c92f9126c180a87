"""Config files of the interpret study, one per preset (`get_config(arg)`; `:tiny` shrinks)."""
