"""Experiment tracking with MLflow: every run job's parameters, metrics and artifacts, where teams compare runs.

``tracking.mlflow`` in a job spec picks the store (fastemb/spec/base.py ``TrackingSpec``): off, a local store in the
run folder (``on``: ``<run>/mlflow.db`` with artifacts in ``<run>/mlartifacts``; MLflow's SQLite store, as its
file store is in maintenance mode since MLflow 3.7), a folder holding a local store, or a tracking URI.

- ``target``: where a job logs (:func:`resolve_target`), the MLflow client settings fastemb uses (no telemetry,
  short HTTP retries), whether a server answers, and metric/parameter names MLflow accepts.
- ``run``: :class:`Tracker`, one MLflow run written by the job's driver (parameters: the flattened spec; tags: the
  reproducible record; metrics; artifacts). A failing store costs one warning and turns the tracker off, never the
  job; nested runs (a Tune trial under its search, a demo stage under the demo) name their parent.
- ``sink``: :class:`MetricSink`, rank 0's live training metrics (loss, pairs/s, dev nDCG@10 per step), queued by
  the loop and written by a background thread, so training never waits on the store.
- ``tune``: :class:`TrialRuns`, Ray Tune's own ``MLflowLoggerCallback`` made safe: one child run per trial with
  the objective at every report, an early-stopped trial marked as such.

Ray Train V2 takes no Tune callbacks and has no MLflow integration of its own; Ray's experiment-tracking guide calls
the tracking library from rank 0 inside the training function, which is what ``sink`` does (Ray's ``setup_mlflow``
starts its own run synchronously on the worker, which would stall it on a down server). Tune also writes
TensorBoard event files for every trial by itself (its default ``TBXLoggerCallback``) in the trial folders.

mlflow (``mlflow-skinny``) is imported only here, and only when a job tracks.
"""
