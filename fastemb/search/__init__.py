"""The ``fastemb search`` job: query texts against an index built by ``fastemb index`` (``fastemb.index.searcher``)."""
