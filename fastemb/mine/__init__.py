"""Hard-negative mining (``fastemb mine``): embed with Ray Data, chunked faiss top-K, positive-aware filtering."""
