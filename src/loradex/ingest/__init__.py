"""Files -> parsed blocks -> token-bounded chunks -> the store, incrementally and versioned."""
