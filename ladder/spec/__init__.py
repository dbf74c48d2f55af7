"""The ladder job spec (pure data: pydantic v2 models, validated before anything starts), one file per section;
this package re-exports what callers use."""
from ladder.spec.gate import GuardSpec, PromotionSpec, SaturationSpec
from ladder.spec.judge import ChatSpec, JudgeSpec
from ladder.spec.ladder import LadderSpec, RungSchedule, SpecError, format_validation_error, json_schema, load_spec, parse_spec
from ladder.spec.resources import MlflowSpec, ResourcesSpec, RoleResources
from ladder.spec.roles import EvalSpec, JudgePoolSpec, RolloutSpec, StudentSpec, SyncSpec, TrainSpec
from ladder.spec.task import TaskSource, TaskSpec

__all__ = ["ChatSpec", "EvalSpec", "GuardSpec", "JudgePoolSpec", "JudgeSpec", "LadderSpec", "MlflowSpec",
           "PromotionSpec", "ResourcesSpec", "RoleResources", "RolloutSpec", "RungSchedule", "SaturationSpec",
           "SpecError", "StudentSpec", "SyncSpec", "TaskSource", "TaskSpec", "TrainSpec", "format_validation_error", "json_schema", "load_spec",
           "parse_spec"]
