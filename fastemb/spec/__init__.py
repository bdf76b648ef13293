"""Typed job specs: one schema per job type, shared by the CLI, Ray Jobs, Tune and the tests.

Modules: ``base`` (section and run-job base classes, ``SpecError``, path markers), ``sections`` (sections shared by
several job types), one module per job type (``train``, ``eval``, ``index``, ``search``, ``tune``, ``serve``,
``mine``, ``demo``, ``merge``, ``static``, ``feedback``), ``jobs`` (the table of job types, overrides, ``parse_spec`` / ``load_spec``) and ``paths``
(the walk over declared path fields). Nothing here imports a stage: rules that belong to a stage live in it.
"""
from fastemb.spec.base import (SPEC_FILE, URI_STORAGE_JOBS, RayRunSpec, RunJob, Section, SpecError, TrackingSpec,
                               input_path, not_path, output_path)
from fastemb.spec.demo import DemoJob
from fastemb.spec.eval import EvalJob
from fastemb.spec.feedback import FeedbackJob
from fastemb.spec.index import ChunkingSpec, CompressSpec, CorpusSpec, IndexEvalSpec, IndexJob, IndexSpec
from fastemb.spec.jobs import JOB_TYPES, VERBS, apply_overrides, command_words, load_spec, parse_spec
from fastemb.spec.merge import MergeInput, MergeJob
from fastemb.spec.mine import MineJob, MinePairsSpec, MiningSpec
from fastemb.spec.search import SearchJob
from fastemb.spec.sections import (AdapterSpec, DataSpec, EmbedSpec, EvalSetSpec, GeneralEvalSpec, LossSpec,
                                   MergeSpec, ModelSpec, NegativeRulesSpec, StudentModelSpec)
from fastemb.spec.serve import (ABSpec, ArmSpec, AutoscalingSpec, BatchingSpec, IngressSpec, LimitsSpec, ReplicaSpec,
                                ServeJob)
from fastemb.spec.static import StaticJob
from fastemb.spec.train import (AttentionTerm, ContinualSpec, DistillSpec, EmbeddingMSETerm, ExportSpec, HiddenStateTerm,
                                ImageTextSpec, KLTerm, LongDocsSpec, MarginMSETerm, MultilingualSpec, MultiViewSpec,
                                NegativePoolSpec, TaskSpec, TrainJob, TrainSpec)
from fastemb.spec.tune import SearchSpace, TuneJob, TuneSpec

__all__ = [
    "ABSpec", "AdapterSpec", "ArmSpec", "AttentionTerm", "AutoscalingSpec", "BatchingSpec", "ChunkingSpec",
    "CompressSpec", "ContinualSpec", "CorpusSpec", "DataSpec", "DemoJob", "DistillSpec", "EmbedSpec",
    "EmbeddingMSETerm", "EvalJob", "EvalSetSpec", "ExportSpec", "FeedbackJob", "GeneralEvalSpec", "HiddenStateTerm",
    "IndexEvalSpec", "IndexJob", "IndexSpec", "IngressSpec", "JOB_TYPES", "KLTerm", "LimitsSpec", "LongDocsSpec",
    "LossSpec", "MarginMSETerm",
    "ImageTextSpec", "MergeInput", "MergeJob", "MergeSpec", "MineJob", "MinePairsSpec", "MiningSpec", "ModelSpec", "MultilingualSpec", "MultiViewSpec", "NegativePoolSpec",
    "NegativeRulesSpec", "RayRunSpec", "ReplicaSpec", "RunJob", "SearchJob",
    "SPEC_FILE", "SearchSpace", "Section", "ServeJob", "SpecError", "StaticJob", "StudentModelSpec", "TaskSpec",
    "TrackingSpec", "TrainJob", "TrainSpec", "TuneJob", "TuneSpec", "URI_STORAGE_JOBS", "VERBS", "apply_overrides",
    "command_words", "input_path", "load_spec", "not_path", "output_path", "parse_spec",
]
