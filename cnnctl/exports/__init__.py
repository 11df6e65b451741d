"""Export formats (one module per runtime, each registering its entries), the accuracy gate and timing."""
