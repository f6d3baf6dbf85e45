"""unimoe package."""
