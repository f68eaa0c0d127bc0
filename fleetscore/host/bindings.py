"""What the local host serves: the app's functions, their trigger bindings with `%SETTING%` resolved, host.json.

Settings are looked up by their app-setting name, as the Functions host does: a name that is a field of
:class:`~fleetscore.settings.Settings` (its alias) takes the value in force there (so the functions and the
host read the same value); any other name comes from the environment, then from `local.settings.json`
`Values` (the file `FLEETSCORE_LOCAL_SETTINGS` names). A binding that names a setting with no value stops
the host from starting, with a message naming the function, the binding property and the setting.

What is required locally:

- timer triggers: `schedule` (an NCRONTAB expression, or `%NAME%` naming one); TimeSpan schedules are refused.
- Event Hub triggers: `eventHubName` (e.g. `%EVENTHUB_NAME%`). The `connection` (EVENTHUB_CONNECTION) is *not*
  needed: events arrive over HTTP on loopback (`POST /events`) and from `fleetscore ingest`.
- blob triggers: `path` (`<container>/<pattern>`, `{name}` placeholders). The `connection` must be
  `AzureWebJobsStorage` (the default): its local equivalent is the configured store, FLEETSCORE_STORAGE.
  Any other connection names a storage account the local host has no stand-in for, and is refused.
- HTTP triggers (with their `http` output binding): `route` (default: the function's name) under host.json's
  `extensions.http.routePrefix` (default `api`), `methods` (default: any), `authLevel` (served by
  :mod:`fleetscore.host.httptriggers`).

Functions with other triggers are not served (listed as skipped); a served function with any binding
besides its trigger (and an HTTP trigger's `http` output) is refused, since the local host could not bind it.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from croniter import croniter
from pydantic import SecretStr

from fleetscore.host.functions import app_folder, app_functions
from fleetscore.settings import LOCAL_SETTINGS_FILE, LocalSettingsSource, Settings, ncrontab_to_croniter

TIMER, EVENT_HUB, BLOB, HTTP = "timerTrigger", "eventHubTrigger", "blobTrigger", "httpTrigger"
SUPPORTED_TRIGGERS = (TIMER, EVENT_HUB, BLOB, HTTP)
DEFAULT_ROUTE_PREFIX = "api"
"""The Functions host's route prefix when host.json does not set `extensions.http.routePrefix`."""
LOCAL_STORAGE_CONNECTIONS = ("AzureWebJobsStorage",)
"""Blob connections the local store stands in for."""
DEFAULT_MAX_EVENT_BATCH_SIZE = 100
"""The Event Hubs extension's default (v5) when host.json does not set one."""
DEFAULT_POISON_BLOB_THRESHOLD = 5
_SETTING_REF = re.compile(r"%([^%\s]*)%")
_NOT_RESOLVED = {"name", "type", "direction", "connection"}


class HostConfigError(RuntimeError):
    """The local host cannot serve the app as configured; the message says which function and setting."""


# ----------------------------------------------------------------------------------------------- functions
def read_functions(app: Any = None) -> list:
    """The app's `Function` objects (default `function_app.app`), read once per app object through the
    process-wide cache the demo and the tests share (the SDK's `get_functions()` may run once)."""
    return list(app_functions(app).values())


def default_host_json() -> Path:
    """host.json next to function_app.py (the Functions app's root folder)."""
    return app_folder() / "host.json"


# ------------------------------------------------------------------------------------------------ settings
class SettingSource:
    """Setting values by app-setting name: Settings fields (by alias), then environment, then local.settings.json."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None,
                 local_values: Mapping[str, Any] | None = None) -> None:
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        if local_values is None:
            path = Path(self.environ.get("FLEETSCORE_LOCAL_SETTINGS", LOCAL_SETTINGS_FILE))
            local_values = LocalSettingsSource(Settings, path).values
        self.local_values = local_values
        self.fields = {(f.alias or name): name for name, f in Settings.model_fields.items()}

    def get(self, name: str) -> str | None:
        """The value of setting `name`, or None when it is unset or empty."""
        if name in self.fields:
            value = getattr(self.settings, self.fields[name], None)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
        else:
            value = self.environ.get(name)
            if value in (None, ""):
                value = self.local_values.get(name)
        if value is None:
            return None
        text = str(value)
        return text if text.strip() else None

    def resolve(self, text: str, *, function: str, prop: str) -> str:
        """`text` with every `%NAME%` replaced by its setting; HostConfigError naming the first one unset."""

        def one(match: re.Match) -> str:
            name = match.group(1)
            if not name:
                raise HostConfigError(f"function {function!r}: binding property {prop!r} has an empty %% reference")
            value = self.get(name)
            if value is None:
                raise HostConfigError(
                    f"function {function!r}: binding property {prop!r} names the setting %{name}%, which is not set "
                    f"(set {name} in the environment or in local.settings.json Values)")
            return value

        return _SETTING_REF.sub(one, text)


# ------------------------------------------------------------------------------------------------ policies
def parse_timespan(text: str | int | float) -> float:
    """A .NET TimeSpan (`00:00:02`, `1.02:00:00`, `00:00:00.5`) or plain seconds → seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    value = str(text).strip()
    match = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)", value)
    if not match:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"not a TimeSpan: {text!r}") from None
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """A function's `@app.retry`: `fixed_delay` or `exponential_backoff`; max_retry_count -1 retries forever."""

    strategy: str
    max_retry_count: int
    delay_seconds: float = 0.0
    minimum_interval: float = 0.0
    maximum_interval: float = 0.0

    @classmethod
    def from_settings(cls, doc: Mapping[str, Any] | None) -> RetryPolicy | None:
        if not doc:
            return None
        strategy = str(doc.get("strategy", "")).lower()
        count = int(doc.get("max_retry_count", 0))
        if strategy == "fixed_delay":
            return cls("fixed_delay", count, delay_seconds=parse_timespan(doc.get("delay_interval", 0)))
        if strategy == "exponential_backoff":
            return cls("exponential_backoff", count, minimum_interval=parse_timespan(doc.get("minimum_interval", 0)),
                       maximum_interval=parse_timespan(doc.get("maximum_interval", 0)))
        raise ValueError(f"unknown retry strategy {doc.get('strategy')!r}")

    def allows(self, retry: int) -> bool:
        """May retry number `retry` (1 = the first retry) run?"""
        return self.max_retry_count < 0 or retry <= self.max_retry_count

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 = first): fixed, or min·2^(n−1) capped at max."""
        if self.strategy == "fixed_delay":
            return self.delay_seconds
        base = self.minimum_interval * (2 ** max(0, retry - 1))
        return min(base, self.maximum_interval) if self.maximum_interval > 0 else base


@dataclass(frozen=True)
class HostJson:
    """The parts of host.json the local host honours."""

    max_event_batch_size: int = DEFAULT_MAX_EVENT_BATCH_SIZE
    poison_blob_threshold: int = DEFAULT_POISON_BLOB_THRESHOLD
    route_prefix: str = DEFAULT_ROUTE_PREFIX

    @classmethod
    def load(cls, path: Path | None) -> HostJson:
        if path is None or not Path(path).is_file():
            return cls()
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise HostConfigError(f"{path} is not valid JSON: {exc}") from None
        ext = doc.get("extensions", {}) if isinstance(doc, dict) else {}
        hubs, blobs = ext.get("eventHubs", {}) or {}, ext.get("blobs", {}) or {}
        try:
            size = int(hubs.get("maxEventBatchSize", DEFAULT_MAX_EVENT_BATCH_SIZE))
            poison = int(blobs.get("poisonBlobThreshold", DEFAULT_POISON_BLOB_THRESHOLD))
        except (TypeError, ValueError) as exc:
            raise HostConfigError(f"{path}: {exc}") from None
        if size < 1 or poison < 1:
            raise HostConfigError(f"{path}: maxEventBatchSize and poisonBlobThreshold must be at least 1")
        prefix = (ext.get("http", {}) or {}).get("routePrefix", DEFAULT_ROUTE_PREFIX)
        if not isinstance(prefix, str):
            raise HostConfigError(f"{path}: extensions.http.routePrefix must be a string")
        return cls(max_event_batch_size=size, poison_blob_threshold=poison, route_prefix=prefix.strip("/"))


# ----------------------------------------------------------------------------------------------- functions
@dataclass(frozen=True)
class HostFunction:
    """One function the local host serves, its trigger binding resolved."""

    name: str
    trigger: str
    arg_name: str
    binding: dict
    func: Callable[..., Any]
    retry: RetryPolicy | None = None
    context_arg: str | None = None
    pattern: re.Pattern | None = field(default=None, compare=False)

    @property
    def schedule(self) -> str:
        return self.binding["schedule"]

    @property
    def use_monitor(self) -> bool:
        return bool(self.binding.get("useMonitor", True))

    @property
    def run_on_startup(self) -> bool:
        return bool(self.binding.get("runOnStartup", False))

    @property
    def event_hub(self) -> str:
        return self.binding["eventHubName"]

    @property
    def many(self) -> bool:
        return str(self.binding.get("cardinality", "MANY")).upper() == "MANY"

    @property
    def path(self) -> str:
        return self.binding["path"]

    @property
    def list_prefix(self) -> str:
        """The literal start of the blob path (before the first `{`): what the poller lists."""
        return self.path.split("{", 1)[0]

    def matches(self, key: str) -> bool:
        return self.pattern is not None and self.pattern.fullmatch(key) is not None

    @property
    def route(self) -> str:
        """The HTTP route template (below the route prefix)."""
        return self.binding["route"]

    @property
    def methods(self) -> tuple[str, ...]:
        """The HTTP methods it answers, upper case (empty: any)."""
        return tuple(str(m).upper() for m in self.binding.get("methods") or ())

    @property
    def auth_level(self) -> str:
        """`function` (the default), `anonymous` or `admin`."""
        return str(self.binding.get("authLevel") or "function").lower()

    def describe(self) -> str:
        if self.trigger == HTTP:
            return f"http {','.join(self.methods) or 'any'} {self.route} ({self.auth_level})"
        if self.trigger == TIMER:
            return f"timer {self.schedule}" + (" (run on startup)" if self.run_on_startup else "")
        if self.trigger == EVENT_HUB:
            return f"event hub {self.event_hub} ({'many' if self.many else 'one'})"
        return f"blob {self.path}"


def blob_pattern(path: str) -> re.Pattern:
    """`predictions/{name}` → a regex over full keys; `{x}` matches one or more characters (slashes too)."""
    parts = re.split(r"(\{[^{}]*\})", path)
    out = []
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            label = part[1:-1]
            out.append(f"(?P<{label}>.+?)" if label.isidentifier() else "(.+?)")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def _binding_dicts(fn: Any) -> list[dict]:
    return list(json.loads(fn.get_function_json()).get("bindings", []))


def plan_function(fn: Any, source: SettingSource) -> HostFunction | None:
    """The served form of one SDK Function, None when its trigger is not served; HostConfigError when it
    cannot be served as configured."""
    name = fn.get_function_name()
    trigger = _served_trigger(name, _binding_dicts(fn))
    if trigger is None:
        return None
    resolved = {key: (source.resolve(value, function=name, prop=key)
                      if isinstance(value, str) and key not in _NOT_RESOLVED else value)
                for key, value in trigger.items()}
    pattern = _CHECK_TRIGGER[trigger["type"]](name, trigger, resolved)
    func = fn.get_user_function()
    context_arg = _context_parameter(name, func, trigger["name"])
    try:
        retry = RetryPolicy.from_settings(fn.get_settings_dict("retry_policy"))
    except ValueError as exc:
        raise HostConfigError(f"function {name!r}: {exc}") from None
    return HostFunction(name=name, trigger=trigger["type"], arg_name=trigger["name"], binding=resolved, func=func,
                        retry=retry, context_arg=context_arg, pattern=pattern)


def _served_trigger(name: str, bindings: list[dict]) -> dict | None:
    """The function's one trigger binding, None when the local host does not serve its kind; HostConfigError
    for a function with no or several triggers, or with any other binding."""
    triggers = [b for b in bindings if str(b.get("type", "")).endswith("Trigger")]
    if len(triggers) != 1:
        raise HostConfigError(f"function {name!r} has {len(triggers)} triggers; expected one")
    trigger = triggers[0]
    if trigger["type"] not in SUPPORTED_TRIGGERS:
        return None
    others = [b.get("type") for b in bindings if b is not trigger and not _http_output(trigger, b)]
    if others:
        raise HostConfigError(f"function {name!r}: the local host cannot bind {others} (only its trigger)")
    return trigger


def _http_output(trigger: dict, binding: dict) -> bool:
    """Is `binding` an HTTP trigger's response (the `http` output the v2 `route` decorator adds)?"""
    return trigger["type"] == HTTP and binding.get("type") == "http" and str(binding.get("direction")).upper() == "OUT"


def _check_timer(name: str, trigger: dict, resolved: dict) -> None:
    """Require a valid NCRONTAB `schedule` (stored stripped in `resolved`)."""
    schedule = str(resolved.get("schedule") or "").strip()
    if not schedule:
        raise HostConfigError(f"function {name!r}: binding property 'schedule' is empty")
    _check_ncrontab(name, schedule, trigger.get("schedule", ""))
    resolved["schedule"] = schedule


def _check_event_hub(name: str, trigger: dict, resolved: dict) -> None:
    """Require an `eventHubName`."""
    if not str(resolved.get("eventHubName") or "").strip():
        raise HostConfigError(f"function {name!r}: binding property 'eventHubName' is empty")


def _check_blob(name: str, trigger: dict, resolved: dict) -> re.Pattern:
    """Require the local store's connection and a `<container>/<pattern>` path; returns the path's regex."""
    connection = trigger.get("connection") or "AzureWebJobsStorage"
    if connection not in LOCAL_STORAGE_CONNECTIONS:
        raise HostConfigError(
            f"function {name!r}: blob connection {connection!r} names a storage account the local host has "
            f"no stand-in for; locally blob triggers watch FLEETSCORE_STORAGE, the equivalent of "
            f"{' or '.join(LOCAL_STORAGE_CONNECTIONS)}")
    path = str(resolved.get("path") or "").strip().strip("/")
    container, sep, rest = path.partition("/")
    if not sep or not rest or "{" in container or not container:
        raise HostConfigError(f"function {name!r}: blob path {path!r} must be '<container>/<pattern>'")
    resolved["path"] = path
    return blob_pattern(path)


def _check_http(name: str, trigger: dict, resolved: dict) -> re.Pattern:
    """Normalise `route` (default: the function's name) and return its regex over the path below the prefix."""
    route = str(resolved.get("route") or name).strip().strip("/")
    resolved["route"] = route
    try:
        return route_pattern(route)
    except ValueError as exc:
        raise HostConfigError(f"function {name!r}: route {route!r}: {exc}") from None


def route_pattern(route: str) -> re.Pattern:
    """An ASP.NET Core route template as the Functions host reads it → a case-insensitive regex over the path
    below the route prefix: `{name}` one segment, `{name?}` an optional last segment, `{name:constraint}` (the
    constraint is not checked locally), `{*name}` the rest of the path. Values are still percent-encoded."""
    out = []
    for i, segment in enumerate(route.split("/") if route else []):
        sep = "/" if i else ""
        m = re.fullmatch(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::[^{}?]*)?(\??)\}", segment)
        if m is None:
            if "{" in segment or "}" in segment:
                raise ValueError(f"segment {segment!r} is not one literal or one {{parameter}}")
            out.append(re.escape(sep + segment))
        elif m.group(1):
            out.append(f"(?:{re.escape(sep)}(?P<{m.group(2)}>.*))?")
        elif m.group(3):
            out.append(f"(?:{re.escape(sep)}(?P<{m.group(2)}>[^/]+))?")
        else:
            out.append(f"{re.escape(sep)}(?P<{m.group(2)}>[^/]+)")
    return re.compile("".join(out), re.IGNORECASE)


_CHECK_TRIGGER: dict[str, Callable[[str, dict, dict], re.Pattern | None]] = {
    TIMER: _check_timer, EVENT_HUB: _check_event_hub, BLOB: _check_blob, HTTP: _check_http}
"""Per served trigger kind: check (and normalise) its resolved binding; a blob trigger's returns its regex."""


def _context_parameter(name: str, func: Callable[..., Any], arg: str) -> str | None:
    """The parameter name `context` when the function takes the invocation context, else None;
    HostConfigError when the trigger's `arg` is not a parameter or another required parameter has no binding."""
    params = inspect.signature(func).parameters
    if arg not in params:
        raise HostConfigError(f"function {name!r}: its trigger binds {arg!r}, which is not a parameter")
    context_arg = "context" if "context" in params else None
    unbound = [p for p in params if p not in (arg, context_arg)
               and params[p].default is inspect.Parameter.empty
               and params[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if unbound:
        raise HostConfigError(f"function {name!r}: parameter(s) {unbound} have no binding")
    return context_arg


def _check_ncrontab(function: str, schedule: str, raw: str) -> None:
    where = f" (from {raw})" if raw != schedule else ""
    if re.fullmatch(r"(?:\d+\.)?\d+:\d+:\d+(?:\.\d+)?", schedule):
        raise HostConfigError(f"function {function!r}: TimeSpan schedule {schedule!r}{where} is not supported by "
                              f"the local host; use a 6-field NCRONTAB expression")
    try:
        ok = croniter.is_valid(ncrontab_to_croniter(schedule))
    except ValueError:
        ok = False
    if not ok:
        raise HostConfigError(f"function {function!r}: schedule {schedule!r}{where} is not a valid NCRONTAB "
                              f"expression (second minute hour day month day-of-week)")


def plan_functions(functions: Iterable[Any], source: SettingSource) -> tuple[list[HostFunction], list[str]]:
    """(served functions, names of functions whose triggers the local host does not serve)."""
    served, skipped = [], []
    for fn in functions:
        planned = plan_function(fn, source)
        if planned is None:
            skipped.append(fn.get_function_name())
        else:
            served.append(planned)
    return served, skipped
