"""Dataset sources built into the core: each module registers one."""
