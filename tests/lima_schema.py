"""A JSON Schema for Lima instance templates, written from Lima's own definition.

Lima reads a template into the Go struct LimaYAML (pkg/limatype/lima_yaml.go in
Lima's repository; its yaml tags are the field names, and templates/default.yaml
documents each). `limactl validate` is the real check; where limactl is not
installed, this schema catches what a template can get wrong without booting:
misspelt or unknown fields (Lima's loader is strict), wrong types, and values
outside Lima's enumerations (architectures, provisioning modes, protocols).
Fields the Heimdall template does not use are typed loosely.
"""

from __future__ import annotations

from typing import Any

ARCHES = ["x86_64", "aarch64", "armv7l", "ppc64le", "riscv64", "s390x"]
VM_TYPES = ["qemu", "vz", "wsl2", "default"]
MOUNT_TYPES = ["reverse-sshfs", "9p", "virtiofs", "wsl2"]
PROVISION_MODES = ["system", "user", "boot", "dependency", "ansible", "data", "yq"]
PROBE_MODES = ["readiness"]
PROTOCOLS = ["tcp", "udp", "any"]

NULLABLE_BOOL: dict[str, Any] = {"type": ["boolean", "null"]}
NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}
PORT: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 65535}
PORT_RANGE: dict[str, Any] = {"type": "array", "items": PORT, "minItems": 2, "maxItems": 2}
LOCATOR: dict[str, Any] = {"oneOf": [{"type": "string"}, {
    "type": "object", "additionalProperties": False, "required": ["url"],
    "properties": {"url": {"type": "string"}, "digest": {"type": "string"}}}]}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": required or []}


FILE = _obj({"location": {"type": "string", "minLength": 1}, "arch": {"enum": ARCHES},
             "digest": {"type": "string"}}, ["location"])

IMAGE = _obj({**FILE["properties"], "variant": {"type": "string"}, "archVariant": {"type": "string"},
              "kernel": _obj({**FILE["properties"], "cmdline": {"type": "string"}}, ["location"]),
              "initrd": FILE}, ["location"])

MOUNT = _obj({
    "location": {"type": "string", "minLength": 1},
    "mountPoint": NULLABLE_STR,
    "writable": NULLABLE_BOOL,
    "sshfs": _obj({"cache": NULLABLE_BOOL, "followSymlinks": NULLABLE_BOOL, "sftpDriver": NULLABLE_STR}),
    "9p": _obj({"securityModel": NULLABLE_STR, "protocolVersion": NULLABLE_STR, "msize": NULLABLE_STR,
                "cache": NULLABLE_STR}),
    "virtiofs": _obj({"queueSize": {"type": ["integer", "null"]}}),
}, ["location"])

PROVISION = _obj({
    "mode": {"enum": PROVISION_MODES},
    "skipDefaultDependencyResolution": NULLABLE_BOOL,
    "script": {"type": "string", "minLength": 1},
    "file": LOCATOR,
    "playbook": {"type": "string"},
    "content": NULLABLE_STR, "overwrite": NULLABLE_BOOL, "owner": {"type": "string"},
    "path": {"type": "string"}, "permissions": {"type": ["string", "integer"]},
    "expression": NULLABLE_STR, "format": NULLABLE_STR,
})

PROBE = _obj({"mode": {"enum": PROBE_MODES}, "description": {"type": "string"},
              "script": {"type": "string", "pattern": "^#!"}, "file": LOCATOR, "hint": {"type": "string"}})

PORT_FORWARD = _obj({
    "guestIPMustBeZero": {"type": "boolean"}, "guestIP": {"type": "string"}, "guestPort": PORT,
    "guestPortRange": PORT_RANGE, "guestSocket": {"type": "string"}, "hostIP": {"type": "string"},
    "hostPort": PORT, "hostPortRange": PORT_RANGE, "hostSocket": {"type": "string"},
    "proto": {"enum": PROTOCOLS}, "reverse": {"type": "boolean"}, "ignore": {"type": "boolean"},
    "static": {"type": "boolean"},
})

ANY_OBJECT: dict[str, Any] = {"type": ["object", "null"]}
ANY_ARRAY: dict[str, Any] = {"type": ["array", "null"]}

SCHEMA: dict[str, Any] = _obj({
    "base": {"oneOf": [LOCATOR, {"type": "array", "items": LOCATOR}]},
    "minimumLimaVersion": {"type": ["string", "null"], "pattern": r"^\d+\.\d+\.\d+$"},
    "vmType": {"enum": [*VM_TYPES, None]},
    "vmOpts": ANY_OBJECT,
    "os": NULLABLE_STR,
    "arch": {"enum": [*ARCHES, "default", None]},
    "images": {"type": "array", "items": IMAGE},
    "cpuType": ANY_OBJECT,
    "cpus": {"type": ["integer", "null"], "minimum": 1},
    "memory": {"type": ["string", "null"], "pattern": r"^\d+(\.\d+)?\s*([KMGT]i?B?)?$"},
    "disk": {"type": ["string", "null"], "pattern": r"^\d+(\.\d+)?\s*([KMGT]i?B?)?$"},
    "additionalDisks": ANY_ARRAY,
    "mounts": {"type": "array", "items": MOUNT},
    "mountTypesUnsupported": {"type": ["array", "null"], "items": {"enum": MOUNT_TYPES}},
    "mountType": {"enum": [*MOUNT_TYPES, None]},
    "mountInotify": NULLABLE_BOOL,
    "ssh": ANY_OBJECT, "firmware": ANY_OBJECT, "audio": ANY_OBJECT, "video": ANY_OBJECT,
    "provision": {"type": "array", "items": PROVISION},
    "upgradePackages": NULLABLE_BOOL,
    "containerd": _obj({"system": NULLABLE_BOOL, "user": NULLABLE_BOOL, "archives": {"type": "array"}}),
    "guestInstallPrefix": NULLABLE_STR,
    "probes": {"type": "array", "items": PROBE},
    "portForwards": {"type": "array", "items": PORT_FORWARD},
    "copyToHost": ANY_ARRAY,
    "message": {"type": "string"},
    "networks": ANY_ARRAY,
    # map[string]string; YAML scalars such as true are read as their text
    "env": {"type": "object", "additionalProperties": {"type": ["string", "boolean", "number"]}},
    "param": {"type": "object", "additionalProperties": {"type": ["string", "boolean", "number"]}},
    "dns": ANY_ARRAY, "hostResolver": ANY_OBJECT,
    "propagateProxyEnv": NULLABLE_BOOL,
    "caCerts": ANY_OBJECT, "rosetta": ANY_OBJECT,
    "plain": NULLABLE_BOOL, "timezone": NULLABLE_STR, "nestedVirtualization": NULLABLE_BOOL,
    "user": ANY_OBJECT, "tpm": NULLABLE_BOOL, "osOpts": ANY_OBJECT,
})
