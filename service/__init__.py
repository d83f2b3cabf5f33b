"""CodeSherpa service: the HTTP surface. It never runs user code itself."""
