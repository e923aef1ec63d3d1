"""The compiler: `compile()` and its passes (one file each)."""
