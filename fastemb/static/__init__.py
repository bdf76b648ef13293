"""Static token-embedding models for the edge: ``fastemb static`` (``job.py``) distils a model with Model2Vec
(fastemb/model/static.py) and measures it against its source."""
