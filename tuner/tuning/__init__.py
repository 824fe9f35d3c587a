"""The tune flow: the search, its budget, the measurement worker, compile-ahead, replay."""
