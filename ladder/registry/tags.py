"""The names of every MLflow tag a ladder writes, in one place (runs, model versions, logged models)."""


class Tag:
    """`ladder.*` tag names. Runs: KIND (ladder | rung), JOB, RUNG, RUNG_UID, PROGRESS, LEASE, STOP_REQUEST,
    SPEC_SHA256, ENDED_BY, JUDGE_PROBE; model versions: the lineage (RUNG, JUDGE, STUDENT_INIT, TASK, JUDGE_MODE ...),
    the decision (STATUS, DECIDED_BY, DECIDED_AT, REASON, ALIASES_MOVED) and the gate's verdict (GATE ...)."""
    KIND = "ladder.kind"
    JOB = "ladder.job"
    RUNG = "ladder.rung"
    RUNG_UID = "ladder.rung_uid"            # idempotency key: a retry never registers (or logs) a second one
    WEIGHTS_SHA256 = "ladder.weights_sha256"  # a logged model's weights: reused only for these very weights
    PROGRESS = "ladder.progress"            # the saved progress (JSON) on the ladder's parent run
    LEASE = "ladder.lease"                  # the live controller's heartbeat
    FENCE = "ladder.fence"                  # experiment tag: the lease's generation and the controller holding it
    STOP_REQUEST = "ladder.stop_request"    # `ladder stop` from a process with no Ray connection
    SPEC_SHA256 = "ladder.spec_sha256"
    ENDED_BY = "ladder.ended_by"            # why a rung ended early (the collapse guard, saturation)
    JUDGE_PROBE = "ladder.judge_probe"      # the judge pool's scores of fixed items: which weights it serves
    LORA_SYNC = "ladder.lora_sync"          # a LoRA rung: what its rollout engines receive (adapter | merged: why)
    CALIBRATION = "ladder.calibration."  # + a calibration file's name: the run that keeps the sampled set
    JUDGE = "ladder.judge"
    JUDGE_KIND = "ladder.judge_kind"
    JUDGE_MODE = "ladder.judge_mode"
    STUDENT_INIT = "ladder.student_init"
    TASK = "ladder.task"
    YARDSTICK = "ladder.yardstick"          # the version's greedy accuracy on the ladder's one yardstick
    STATUS = "ladder.status"                # candidate / promoted / rejected
    DECIDED_BY = "ladder.decided_by"
    DECIDED_AT = "ladder.decided_at"
    REASON = "ladder.reason"
    ALIASES_MOVED = "ladder.aliases_moved"
    GATE = "ladder.gate"                    # the verdict, written last: a version with it has every gate tag
    GATE_RULE = "ladder.gate_rule"
    GATE_REASON = "ladder.gate_reason"
    JUDGE_ACCURACY = "ladder.judge_accuracy"
    JUDGE_AUC = "ladder.judge_auc"
