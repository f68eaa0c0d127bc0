"""Settings: environment variables, then `local.settings.json` `Values`, then defaults.

Names are the Azure Functions app-setting names (no prefix), so the same values work in the
Function App's configuration, in `local.settings.json` and in a shell. A wrong value fails at
start with a `SettingsError` naming the setting.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from croniter import croniter
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from scoring_job import change
from scoring_job.features import DEFAULT_MODEL_FEATURES, FEATURE_NAMES
from scoring_job.thresholds import FALSE_RATE

LOCAL_SETTINGS_FILE = "local.settings.json"
DEFAULT_ALERT_PERSISTENCE = "3/4"
"""k/n of the alert rules when neither ALERT_PERSISTENCE nor ALERT_MIN_WINDOWS is set (measured: docs/DETECTION.md)."""
BACKENDS = ("local", "aml-pipeline", "aml-batch-endpoint")


class SettingsError(ValueError):
    """A setting has a wrong value; the message names the setting."""


def ncrontab_to_croniter(expr: str) -> str:
    """Turn a 6-field NCRONTAB (`sec min hour day month dow`) into croniter's order (seconds last)."""
    fields = expr.split()
    if len(fields) != 6:
        raise ValueError(f"NCRONTAB needs 6 fields (second minute hour day month day-of-week), got {expr!r}")
    return " ".join(fields[1:] + fields[:1])


def parse_k_of_n(text: str) -> tuple[int, int]:
    """ "k/n" → (k, n) with 1 <= k <= n; ValueError otherwise."""
    k, sep, n = str(text).strip().partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit() and 1 <= int(k) <= int(n)):
        raise ValueError(f"want 'k/n' with integers 1 <= k <= n (e.g. '2/3'), got {text!r}")
    return int(k), int(n)


class LocalSettingsSource(PydanticBaseSettingsSource):
    """`Values` of `local.settings.json` (the Functions Core Tools convention)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.values: dict[str, Any] = {}
        if path.is_file():
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{path} is not valid JSON: {exc}") from exc
            values = doc.get("Values", {}) if isinstance(doc, dict) else {}
            if not isinstance(values, dict):
                raise SettingsError(f"{path}: 'Values' must be an object")
            self.values = {k: v for k, v in values.items() if v not in (None, "")}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        name = field.alias or field_name
        return self.values.get(name), name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            name = field.alias or field_name
            if name in self.values:
                out[name] = self.values[name]
        return out


class Settings(BaseSettings):
    """Every setting fleetscore reads. Field aliases are the setting names."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", case_sensitive=True)

    sql_url: str = Field("sqlite:///.fleetscore/fleet.db", alias="FLEETSCORE_SQL_URL")
    storage: str = Field(".fleetscore/blobs", alias="FLEETSCORE_STORAGE")
    window_minutes: int = Field(5, alias="WINDOW_MINUTES", ge=1, le=1440)
    late_arrival_seconds: int = Field(300, alias="LATE_ARRIVAL_SECONDS", ge=0, le=7 * 86400)

    eventhub_name: str = Field("readings", alias="EVENTHUB_NAME", min_length=1)
    eventhub_connection: SecretStr | None = Field(None, alias="EVENTHUB_CONNECTION")
    eventhub_consumer_group: str = Field(
        "$Default", alias="EVENTHUB_CONSUMER_GROUP", min_length=1,
        description="the ingest trigger's consumer group (%EVENTHUB_CONSUMER_GROUP% in its binding)",
    )

    scoring_schedule: str = Field("0 5 * * * *", alias="SCORING_SCHEDULE")
    scoring_backend: Literal["local", "aml-pipeline", "aml-batch-endpoint"] = Field(
        "local", alias="SCORING_BACKEND"
    )
    partition_models: int = Field(2000, alias="PARTITION_MODELS", ge=1)
    scoring_workers: int = Field(0, alias="SCORING_WORKERS", ge=0, description="0 = one per core")
    export_streams: int = Field(
        2, alias="EXPORT_STREAMS", ge=1,
        description="threads that read a run's export side by side, each a block of adjacent device ranges of about "
                    "PARTITION_MODELS pairs (fewer when the fleet is small)",
    )
    scoring_dtype: Literal["float64", "float32"] = Field("float64", alias="SCORING_DTYPE")
    run_lease_seconds: int = Field(
        120, alias="RUN_LEASE_SECONDS", ge=1, le=3600,
        description="the lease of the process running a run, renewed at each partition it exports, scores and "
                    "indexes (at most every third of it); a run whose lease lapsed is failed and retryable at once",
    )
    run_max_attempts: int = Field(
        3, alias="RUN_MAX_ATTEMPTS", ge=1, description="tries of a slot's run, automatic retries by the timer included",
    )
    max_lookback_hours: float = Field(
        48.0, alias="MAX_LOOKBACK_HOURS", gt=0,
        description="with no watermark yet, a run scores at most this far back from its slot",
    )

    model_algorithm: str = Field("change-z", alias="MODEL_ALGORITHM")
    model_features: str | None = Field(
        None, alias="MODEL_FEATURES",
        description="comma list; unset: change-z reads " + ",".join(change.FEATURES) + ", the others "
                    + ",".join(DEFAULT_MODEL_FEATURES),
    )
    announce_sensors: str = Field(
        ",".join(change.ANNOUNCE_SENSORS), alias="ANNOUNCE_SENSORS",
        description="comma list of sensors whose change announces a normal level change of their device's other "
                    f"sensors (change-z does not judge the device for {change.SETTLE_WINDOWS} windows from it); "
                    "empty: none",
    )
    model_min_windows: int = Field(48, alias="MODEL_MIN_WINDOWS", ge=5)
    alert_false_rate: float = Field(
        FALSE_RATE, alias="ALERT_FALSE_RATE", gt=0, lt=0.5,
        description="target false-alarm rate per window of each model's calibrated alert threshold (training)",
    )
    model_params: dict[str, float | int | str | bool] = Field(
        default_factory=dict, alias="MODEL_PARAMS",
        description='JSON object overriding the detector\'s parameters, e.g. {"nu": 0.01}',
    )

    alert_close_after_windows: int = Field(3, alias="ALERT_CLOSE_AFTER_WINDOWS", ge=1)
    alert_min_windows: int | None = Field(
        None, alias="ALERT_MIN_WINDOWS", ge=1,
        description="deprecated: the same as ALERT_PERSISTENCE=k/k (k anomalous windows in a row)",
    )
    alert_persistence: str | None = Field(
        None, alias="ALERT_PERSISTENCE",
        description=f"k/n: a marginal anomalous window opens an alert when k of the pair's last n windows are "
                    f"anomalous (a strong one at once); default {DEFAULT_ALERT_PERSISTENCE}",
    )
    alert_webhook_url: SecretStr | None = Field(None, alias="ALERT_WEBHOOK_URL")
    alert_webhook_format: Literal["plain", "cloudevents"] = Field(
        "plain", alias="ALERT_WEBHOOK_FORMAT",
        description="webhook body: the alert document (plain) or a CloudEvents 1.0 event in structured JSON mode",
    )
    alert_event_source: str = Field(
        "/fleetscore/alerts", alias="ALERT_EVENT_SOURCE", min_length=1,
        description="the CloudEvents `source` (a URI reference) of alert events, webhook and Event Grid",
    )
    eventgrid_topic_endpoint: str | None = Field(
        None, alias="EVENTGRID_TOPIC_ENDPOINT", pattern=r"^https?://",
        description="an Event Grid topic (CloudEvents 1.0 input schema) every alert revision is published to",
    )
    eventgrid_topic_key: SecretStr | None = Field(
        None, alias="EVENTGRID_TOPIC_KEY",
        description="the topic's access key (aeg-sas-key); unset: a Microsoft Entra token (EventGrid Data Sender)",
    )
    applicationinsights_connection_string: SecretStr | None = Field(
        None, alias="APPLICATIONINSIGHTS_CONNECTION_STRING",
        description="export OpenTelemetry metrics and traces to Application Insights; unset: nowhere",
    )
    poison_blob_threshold: int = Field(5, alias="POISON_BLOB_THRESHOLD", ge=1)
    api_key: SecretStr | None = Field(
        None, alias="FLEETSCORE_API_KEY",
        description="the HTTP API's key under `fleetscore up` (x-functions-key header or code query parameter); "
                    "unset: the local host serves no API. On Azure the Functions host checks its own function keys",
    )
    api_token_secret: SecretStr | None = Field(
        None, alias="API_TOKEN_SECRET",
        description="HMAC key of the API's page tokens (the same on every instance); unset: FLEETSCORE_API_KEY, "
                    "else a key of this process (tokens then work on the instance that issued them only)",
    )

    aml_pipeline_endpoint: str | None = Field(None, alias="AML_PIPELINE_ENDPOINT")
    aml_batch_endpoint: str | None = Field(None, alias="AML_BATCH_ENDPOINT")
    aml_batch_deployment: str | None = Field(None, alias="AML_BATCH_DEPLOYMENT")
    aml_experiment: str = Field("fleetscore", alias="AML_EXPERIMENT")
    aml_datastore: str = Field(
        "fleetscore", alias="AML_DATASTORE", pattern=r"^[A-Za-z0-9_]{1,200}$",
        description="prefix of the workspace datastores, one per container: <prefix>_data, _models, _predictions",
    )
    aml_subscription_id: str | None = Field(None, alias="AML_SUBSCRIPTION_ID")
    aml_resource_group: str | None = Field(None, alias="AML_RESOURCE_GROUP")
    aml_workspace: str | None = Field(None, alias="AML_WORKSPACE")
    aml_storage_account: str | None = Field(
        None, alias="AML_STORAGE_ACCOUNT",
        description="the Functions app's storage account name; publish registers the datastores on it",
    )
    aml_compute: str = Field("fleetscore-cpu", alias="AML_COMPUTE", min_length=2, max_length=16)
    aml_vm_size: str = Field("Standard_D4s_v3", alias="AML_VM_SIZE")
    aml_max_nodes: int = Field(4, alias="AML_MAX_NODES", ge=1)
    aml_node_count: int = Field(2, alias="AML_NODE_COUNT", ge=1, description="nodes one scoring job uses")
    aml_low_priority: bool = Field(False, alias="AML_LOW_PRIORITY")
    aml_process_count_per_node: int = Field(2, alias="AML_PROCESS_COUNT_PER_NODE", ge=1)
    aml_mini_batch_size: int = Field(1, alias="AML_MINI_BATCH_SIZE", ge=1, description="partitions per mini-batch")
    aml_error_threshold: int = Field(
        0, alias="AML_ERROR_THRESHOLD", ge=-1, description="failed partitions a job tolerates (-1: any)"
    )
    aml_max_retries: int = Field(3, alias="AML_MAX_RETRIES", ge=1, description="tries of a failed mini-batch")
    aml_run_timeout_seconds: int = Field(600, alias="AML_RUN_TIMEOUT_SECONDS", ge=10, description="per mini-batch")
    aml_image: str = Field("mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest", alias="AML_IMAGE")
    aml_pipeline_name: str = Field("fleetscore-scoring", alias="AML_PIPELINE_NAME")
    aml_endpoint_name: str = Field(
        "fleetscore-scoring", alias="AML_ENDPOINT_NAME", pattern=r"^[A-Za-z][A-Za-z0-9-]{2,31}$",
        description="batch endpoint name (v2 publish); unique per Azure region",
    )
    aml_submit_timeout_seconds: float = Field(30.0, alias="AML_SUBMIT_TIMEOUT_SECONDS", gt=0)

    @field_validator("model_params", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value or "{}")
            except ValueError as exc:
                raise ValueError(f"not a JSON object: {exc}") from None
        return value

    @field_validator("scoring_schedule")
    @classmethod
    def _valid_ncrontab(cls, value: str) -> str:
        expr = ncrontab_to_croniter(value)
        if not croniter.is_valid(expr):
            raise ValueError(f"not a valid NCRONTAB expression: {value!r}")
        return value

    @field_validator("sql_url")
    @classmethod
    def _valid_sql_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url

        try:
            make_url(value)
        except Exception as exc:  # sqlalchemy raises ArgumentError; keep the message
            raise ValueError(f"not a SQLAlchemy URL: {exc}") from None
        return value

    @field_validator("model_features")
    @classmethod
    def _valid_features(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        allowed = set(FEATURE_NAMES)
        names = [f.strip() for f in value.split(",") if f.strip()]
        bad = [f for f in names if f not in allowed]
        if not names or bad:
            raise ValueError(f"features must be a comma list from {sorted(allowed)}, got {value!r}")
        return ",".join(names)

    @field_validator("alert_persistence")
    @classmethod
    def _valid_persistence(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("alert_min_windows") is not None:
            raise ValueError("set ALERT_PERSISTENCE or the older ALERT_MIN_WINDOWS (= k/k), not both")
        return "{}/{}".format(*parse_k_of_n(value))

    @property
    def alert_k_of_n(self) -> tuple[int, int]:
        """(k, n) of the alert persistence rule: ALERT_PERSISTENCE, else ALERT_MIN_WINDOWS as k/k, else the default."""
        if self.alert_persistence is not None:
            return parse_k_of_n(self.alert_persistence)
        if self.alert_min_windows is not None:
            return self.alert_min_windows, self.alert_min_windows
        return parse_k_of_n(DEFAULT_ALERT_PERSISTENCE)

    @property
    def features(self) -> tuple[str, ...]:
        """The features of MODEL_ALGORITHM's models (MODEL_FEATURES, else the algorithm's own default)."""
        return self.features_for(self.model_algorithm)

    def features_for(self, algorithm: str) -> tuple[str, ...]:
        """MODEL_FEATURES when set, else what `algorithm` reads by default."""
        if self.model_features is not None:
            return tuple(self.model_features.split(","))
        return change.FEATURES if algorithm == "change-z" else DEFAULT_MODEL_FEATURES

    @property
    def announce(self) -> tuple[str, ...]:
        """ANNOUNCE_SENSORS as a tuple of names (empty: none)."""
        return tuple(a.strip() for a in self.announce_sensors.split(",") if a.strip())

    @property
    def window_ms(self) -> int:
        return self.window_minutes * 60_000

    @property
    def workers(self) -> int:
        return self.scoring_workers or (os.cpu_count() or 1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("FLEETSCORE_LOCAL_SETTINGS", LOCAL_SETTINGS_FILE))
        return (init_settings, env_settings, LocalSettingsSource(settings_cls, path))

    def secrets(self) -> list[str]:
        """Every secret value in force (for log-scrubbing tests and filters)."""
        values = [self.eventhub_connection, self.alert_webhook_url, self.eventgrid_topic_key]
        values += [self.api_key, self.api_token_secret]
        out = [v.get_secret_value() for v in values if v is not None]
        from urllib.parse import parse_qsl, urlsplit

        from sqlalchemy.engine import make_url

        password = make_url(self.sql_url).password
        if password:
            out.append(str(password))
        # the key parts alone too: a log line may quote a fragment of a connection string or URL
        for text in [*out, self.storage]:
            for part in text.split(";"):
                name, _, value = part.partition("=")
                if name.strip().lower() in ("accountkey", "sharedaccesskey", "sharedaccesssignature") and value:
                    out.append(value.strip())
        if self.alert_webhook_url is not None:
            url = urlsplit(self.alert_webhook_url.get_secret_value())
            out += [v for _, v in parse_qsl(url.query) if len(v) >= 4]
            if url.password:
                out.append(url.password)
        return sorted(set(out), key=len, reverse=True)


def _may_hold_secret(name: str) -> bool:
    """Settings whose value may carry a password, key or token: never echoed in an error."""
    return any(word in name.upper() for word in ("URL", "CONNECTION", "STORAGE", "KEY", "SECRET", "TOKEN",
                                                 "ENDPOINT"))


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise `SettingsError` naming every wrong setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            shown = "" if _may_hold_secret(name) else f" (got {err.get('input')!r})"
            problems.append(f"{name}: {err['msg']}{shown}")
        raise SettingsError("invalid setting(s): " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return load_settings()
