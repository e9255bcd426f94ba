#!/usr/bin/python
# -*- coding: utf-8 -*-
# Drives the abupdate binary on the managed host through its --json interface.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: abupdate
short_description: Stage, switch, commit and roll back A/B root-partition upgrades with abupdate
description:
  - Calls C(abupdate --json VERB) on the managed host and reports C(changed) only when a
    writing verb ran, so a playbook run a second time changes nothing.
  - Every state first reads C(abupdate --json status) and decides from it whether anything
    needs to be done. The writing verbs never reboot (C(--no-reboot)); the result says
    whether a reboot is needed (RV(reboot_required)) and the caller reboots.
  - A release is named by exactly one source, O(image), O(tar) or O(channel). A slot
    "holds" the release when abupdate recorded that source for it (the path, or the URL
    with its password masked), and the checksum when C(status) reports one, or, for a
    channel, the release version.
version_added: "0.1.0"
options:
  state:
    description:
      - C(status) reads the status and history and changes nothing.
      - C(staged) stages the release onto the spare slot unless a slot already holds it.
      - C(switched) makes the staged slot holding the release the next boot's trial
        (C(switch --no-reboot)) unless it is already on trial or already booted.
      - C(committed) commits the booted trial slot (C(commit)), or with O(wait_for_daemon)
        waits until the boot assessment daemon has committed it.
      - C(rolled_back) undoes a trial (pending or booted); with a release given, also makes
        the other good slot the default when the default slot holds that release.
    type: str
    choices: [status, staged, switched, committed, rolled_back]
    default: status
  image:
    description: Path or http(s) URL of a filesystem image (C(abupdate stage IMAGE)).
    type: str
  tar:
    description: Path or http(s) URL of a tar archive of a root tree (C(abupdate stage --from-tar)).
    type: str
  sha256:
    description: Expected sha256 of O(image) or O(tar), in hex.
    type: str
  sha256_url:
    description: URL or path of a SHA256SUMS file listing O(image) or O(tar).
    type: str
  allow_insecure_http:
    description:
      - Accept a plain C(http://) O(image), O(tar) or O(sha256_url)
        (C(abupdate stage --allow-insecure-http)), for instance a mirror inside the
        datacenter. abupdate refuses plain http otherwise; O(sha256) still checks every byte.
    type: bool
    default: false
  channel:
    description:
      - Take the release from the host's signed channel (C(abupdate stage --channel)).
      - Without O(version), the release C(abupdate check --json) offers; when the channel
        offers nothing newer, C(staged) reports no change.
    type: bool
    default: false
  version:
    description: With O(channel), the release version to stage (C(--version)).
    type: str
  tries:
    description: With C(switched), boot attempts the trial gets (default from abupdate.yaml).
    type: int
  wait_for_daemon:
    description:
      - With C(committed), do not run C(commit); wait until the daemon has committed the
        booted trial slot, and fail when it records a failed assessment or O(timeout) passes.
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for the daemon (O(wait_for_daemon)), or for another abupdate that
        holds the lock, before failing.
    type: int
    default: 600
  poll:
    description: Seconds between two status reads while waiting.
    type: int
    default: 5
  config:
    description: Configuration file (C(--config)); abupdate's default when left out.
    type: path
  binary:
    description: The abupdate executable on the managed host.
    type: path
    default: abupdate
author:
  - abupdate contributors
notes:
  - Supports check mode. The module never reboots the host.
"""

EXAMPLES = r"""
- name: Stage Debian 13 from the image server
  abupdate.fleet.abupdate:
    state: staged
    image: http://images.internal/trixie.img.zst
    sha256: f7641e805800d0a518a85de5d9c6fa718f421225f56fb5061a625fe326c8373b

- name: Try it on the next boot
  abupdate.fleet.abupdate:
    state: switched
    image: http://images.internal/trixie.img.zst
  register: sw

- name: Stage what the signed channel offers
  abupdate.fleet.abupdate:
    state: staged
    channel: true

- name: Commit the trial slot after the checks passed
  abupdate.fleet.abupdate:
    state: committed
"""

RETURN = r"""
status:
  description: C(abupdate --json status) after the module ran.
  returned: always
  type: dict
booted:
  description: The booted slot (C(a) or C(b)).
  returned: always
  type: str
default:
  description: The default slot.
  returned: always
  type: str
trial:
  description: The pending or running trial (slot, tries_left), or null.
  returned: always
  type: dict
release_slot:
  description: The slot holding the release named by image, tar or channel, or null.
  returned: when a release is named
  type: str
outcome:
  description: The JSON abupdate printed for the writing verb that ran.
  returned: when changed
  type: dict
reboot_required:
  description: Whether the host must reboot to boot what the boot state now says.
  returned: always
  type: bool
failed_trial:
  description:
    - The last failed trial since the last switch, from the history (C(recorded=true),
      a C(trial-failed) or failed C(assess) entry) or, before the daemon recorded it,
      from the status (a trial slot left without tries while another slot is booted).
  returned: always
  type: dict
  sample: {slot: b, recorded: true, time: "2025-12-01T11:40:02Z", detail: "trial of slot b failed: never reached commit after 3 tries; slot a is still the default"}
history:
  description: The last 10 history entries, oldest first.
  returned: always
  type: list
  elements: dict
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule

try:  # Python 3
    from urllib.parse import urlsplit, urlunsplit
except ImportError:  # pragma: no cover
    from urlparse import urlsplit, urlunsplit

LIVE_STATES = ("staged", "trial", "good")
EXIT_MEANING = {
    1: "internal error",
    2: "usage or configuration error",
    3: "refused by a precondition",
    4: "verification failed",
    5: "I/O or system error",
}
LOCK_HELD = "another abupdate"


class AbupdateError(Exception):
    """A failed abupdate call, with what fail_json needs."""

    def __init__(self, msg, **details):
        super(AbupdateError, self).__init__(msg)
        self.details = details


class Abupdate(object):
    """Runs abupdate with --json and parses what it prints."""

    def __init__(self, module):
        self.module = module
        self.base = [module.params["binary"]]
        if module.params["config"]:
            self.base += ["--config", module.params["config"]]
        self.base.append("--json")

    def run(self, args, wait_lock=False):
        """Runs one verb; retries while another abupdate holds the lock (wait_lock)."""
        deadline = time.time() + self.module.params["timeout"]
        while True:
            cmd = self.base + list(args)
            rc, out, err = self.module.run_command(cmd)
            if rc == 0:
                try:
                    return json.loads(out) if out.strip() else {}
                except ValueError as e:
                    raise AbupdateError(
                        "abupdate %s printed no JSON: %s" % (args[0], e),
                        cmd=cmd, rc=rc, stdout=out, stderr=err)
            if wait_lock and rc == 3 and LOCK_HELD in err and time.time() < deadline:
                time.sleep(self.module.params["poll"])
                continue
            raise AbupdateError(
                "abupdate %s failed (exit %d, %s): %s"
                % (args[0], rc, EXIT_MEANING.get(rc, "unknown exit code"), err.strip()),
                cmd=cmd, rc=rc, stdout=out, stderr=err)

    def status(self):
        """`abupdate --json status`."""
        return self.run(["status"])

    def history(self):
        """`abupdate --json history` entries, oldest first."""
        return self.run(["history"]).get("entries", [])


def masked_source(source):
    """The source as abupdate records it: a URL with a lower-case scheme and host, a path
    of at least "/", and its password replaced by ***; a file path as given."""
    try:
        parts = urlsplit(source)
    except ValueError:
        return source
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return source
    host = parts.hostname or ""
    if parts.port:
        host = "%s:%d" % (host, parts.port)
    if parts.username is not None or parts.password is not None:
        user = parts.username or ""
        host = "%s%s@%s" % (user, ":***" if parts.password is not None else "", host)
    return urlunsplit((scheme, host, parts.path or "/", parts.query, parts.fragment))


def slot_version(slot):
    """The channel release version abupdate recorded for a slot, if any."""
    release = slot.get("release")
    if isinstance(release, dict):
        return release.get("version")
    return slot.get("release_version") or (release if isinstance(release, str) else None)


def holds(slot, want):
    """Whether a slot holds the wanted release (dict with source/sha256 or version)."""
    if slot.get("state") not in LIVE_STATES:
        return False
    if "version" in want:
        return want["version"] is not None and slot_version(slot) == want["version"]
    if slot.get("source") != want["source"]:
        return False
    sha = want.get("sha256")
    return not (sha and slot.get("sha256") and slot["sha256"].lower() != sha.lower())


def release_slot(status, want):
    """The slot holding the release: the booted one first, else the other."""
    if want is None:
        return None
    slots = sorted(status.get("slots", []), key=lambda s: not s.get("booted"))
    for s in slots:
        if holds(s, want):
            return s["id"]
    return None


def slot_info(status, slot_id):
    """The status entry of one slot."""
    for s in status.get("slots", []):
        if s.get("id") == slot_id:
            return s
    return {}


def reboot_required(status):
    """Whether the next boot boots something else than what runs now."""
    booted = status.get("booted")
    trial = status.get("trial")
    if trial and trial.get("tries_left", 0) > 0:
        return trial.get("slot") != booted
    if trial and trial.get("slot") == booted:
        return False
    return status.get("default") not in (None, booted)


def failed_trial(status, history):
    """The last failed trial since the last switch (see RETURN)."""
    last_switch = None
    for i, e in enumerate(history):
        if e.get("op") == "switch" and e.get("result") == "ok":
            last_switch = i
    if last_switch is not None:
        for e in reversed(history[last_switch + 1:]):
            if e.get("op") in ("trial-failed", "assess") and e.get("result") == "failed":
                return {"slot": e.get("slot"), "recorded": True,
                        "time": e.get("time"), "detail": e.get("detail")}
    booted = status.get("booted")
    trial = status.get("trial")
    if trial and trial.get("slot") != booted and trial.get("tries_left", 0) == 0:
        slot = trial.get("slot")
        return {"slot": slot, "recorded": False, "time": None,
                "detail": "trial of slot %s failed: GRUB booted slot %s after the trial's "
                          "tries ran out (not recorded by the daemon yet)" % (slot, booted)}
    return None


def wanted_release(module, ab):
    """The release named by the parameters: (want, stage_args), or (None, None)."""
    p = module.params
    if p["image"] or p["tar"]:
        source = p["image"] or p["tar"]
        args = [source] if p["image"] else ["--from-tar", source]
        if p["sha256"]:
            args += ["--sha256", p["sha256"]]
        elif p["sha256_url"]:
            args += ["--sha256-url", p["sha256_url"]]
        if p["allow_insecure_http"]:
            args.append("--allow-insecure-http")
        want = {"source": masked_source(source)}
        if p["sha256"]:
            want["sha256"] = p["sha256"]
        return want, args
    if p["channel"]:
        args = ["--channel"]
        version = p["version"]
        if version:
            args += ["--version", version]
        elif p["state"] == "staged":
            # The newest release the channel allows for this host now, or none.
            offered = ab.run(["check"]).get("offered") or {}
            version = offered.get("version")
            if version is None:
                return {"version": None}, args
        else:
            # Without a version, switch/commit/rollback act on whatever slot is staged.
            return None, args
        return {"version": version}, args
    return None, None


def act(module, ab, status, want, stage_args):
    """Decides and runs the writing verb for the state: (changed, outcome, msg)."""
    p = module.params
    state = p["state"]
    booted = status["booted"]
    trial = status.get("trial") or None
    rslot = release_slot(status, want)
    check = module.check_mode

    if state == "staged":
        if want is None:
            module.fail_json(msg="state=staged needs image, tar or channel")
        if rslot:
            return False, None, "slot %s already holds the release" % rslot
        if "version" in want and want["version"] is None:
            return False, None, "the channel offers no newer release"
        if check:
            return True, None, "would stage the release"
        return True, ab.run(["stage"] + stage_args, wait_lock=True), "staged"

    if state == "switched":
        if want is not None and rslot is None:
            module.fail_json(msg="no slot holds the release: stage it first", status=status)
        target = rslot or [s["id"] for s in status["slots"] if not s.get("booted")][0]
        if target == booted:
            return False, None, "slot %s holds the release and is booted" % target
        if trial and trial.get("slot") == target and trial.get("tries_left", 0) > 0:
            return False, None, "slot %s is already pending a trial boot" % target
        if check:
            return True, None, "would switch to slot %s" % target
        args = ["switch", "--no-reboot"]
        if p["tries"] is not None:
            args += ["--tries", str(p["tries"])]
        return True, ab.run(args, wait_lock=True), "switched to slot %s" % target

    if state == "committed":
        if want is not None and rslot != booted:
            module.fail_json(msg="the booted slot %s does not hold the release" % booted,
                             status=status, failed_trial=failed_trial(status, ab.history()))
        on_trial = bool(trial and trial.get("slot") == booted)
        if not on_trial:
            if status.get("default") == booted:
                return False, None, "slot %s is committed and the default" % booted
            module.fail_json(msg="the booted slot %s is neither on trial nor the default"
                             % booted, status=status)
        if check:
            return True, None, "would commit slot %s" % booted
        if p["wait_for_daemon"]:
            return True, wait_daemon(module, ab, booted), "committed by the daemon"
        return True, ab.run(["commit"], wait_lock=True), "committed slot %s" % booted

    if state == "rolled_back":
        on_trial = bool(trial and (trial.get("slot") == booted or trial.get("tries_left", 0) > 0))
        default_holds = want is not None and rslot is not None and rslot == status.get("default")
        if not on_trial and not default_holds:
            return False, None, "nothing to roll back"
        if check:
            return True, None, "would roll back"
        return True, ab.run(["rollback", "--no-reboot"], wait_lock=True), "rolled back"

    return False, None, "status read"


def wait_daemon(module, ab, slot):
    """Waits until the daemon committed `slot`; fails on a failed assessment or timeout."""
    deadline = time.time() + module.params["timeout"]
    while True:
        st = ab.status()
        trial = st.get("trial")
        if st.get("default") == slot and not (trial and trial.get("slot") == slot):
            return {"op": "commit", "slot": slot, "by": "daemon",
                    "message": (st.get("last_operation") or {}).get("detail")}
        ft = failed_trial(st, ab.history())
        if ft and ft.get("slot") == slot:
            module.fail_json(msg="the daemon failed the trial of slot %s: %s"
                             % (slot, ft["detail"]), status=st, failed_trial=ft)
        if time.time() >= deadline:
            module.fail_json(msg="the daemon did not commit slot %s within %d s"
                             % (slot, module.params["timeout"]), status=st)
        time.sleep(module.params["poll"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="status",
                       choices=["status", "staged", "switched", "committed", "rolled_back"]),
            image=dict(type="str"),
            tar=dict(type="str"),
            sha256=dict(type="str"),
            sha256_url=dict(type="str"),
            allow_insecure_http=dict(type="bool", default=False),
            channel=dict(type="bool", default=False),
            version=dict(type="str"),
            tries=dict(type="int"),
            wait_for_daemon=dict(type="bool", default=False),
            timeout=dict(type="int", default=600),
            poll=dict(type="int", default=5),
            config=dict(type="path"),
            binary=dict(type="path", default="abupdate"),
        ),
        mutually_exclusive=[("image", "tar"), ("sha256", "sha256_url")],
        supports_check_mode=True,
    )
    p = module.params
    if (p["image"] or p["tar"]) and p["channel"]:
        module.fail_json(msg="parameters are mutually exclusive: image|tar|channel")
    if p["version"] and not p["channel"]:
        module.fail_json(msg="version is only for channel=true")
    if (p["image"] or p["tar"]) and not (p["sha256"] or p["sha256_url"]) \
            and p["state"] == "staged":
        module.fail_json(msg="image and tar need sha256 or sha256_url")

    ab = Abupdate(module)
    try:
        status = ab.status()
        want, stage_args = wanted_release(module, ab)
        changed, outcome, msg = act(module, ab, status, want, stage_args)
        if changed and not module.check_mode:
            status = ab.status()
        history = ab.history()
    except AbupdateError as e:
        module.fail_json(msg=str(e), **e.details)

    result = dict(
        changed=changed,
        msg=msg,
        status=status,
        booted=status.get("booted"),
        default=status.get("default"),
        trial=status.get("trial"),
        reboot_required=reboot_required(status),
        failed_trial=failed_trial(status, history),
        history=history[-10:],
    )
    if want is not None:
        result["release_slot"] = release_slot(status, want)
    if outcome is not None:
        result["outcome"] = outcome
    module.exit_json(**result)


if __name__ == "__main__":
    main()
