# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_abupdate_global_optspecs
    string join \n config= json h/help V/version
end

function __fish_abupdate_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_abupdate_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_abupdate_using_subcommand
    set -l cmd (__fish_abupdate_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c abupdate -n "__fish_abupdate_needs_command" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_needs_command" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_needs_command" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_needs_command" -s V -l version -d 'Print version'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "status" -d 'Show both slots, the booted and default slot, the pending trial, the last operation'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "stage" -d 'Write a new distribution image onto the spare slot and prepare it'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "switch" -d 'Boot the staged slot next as a bounded trial, then reboot'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "commit" -d 'In the trial slot: make it the good default'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "rollback" -d 'Make the other good slot the default (or cancel a pending trial), then reboot'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "history" -d 'Show past operations'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "init" -d 'First-time setup of the boot partition with SLOT as the good default'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "manifest" -d 'Manifest helpers'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "daemon" -d 'Boot assessment (run by abupdate.service on every boot): commit a healthy trial slot, or return to the old one; then, with `update:` set, poll the release channel'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "repair" -d 'Rewrite a damaged state.json, grubenv or history.json from what can still be read (the slots\' filesystems, os-release and kernels, what GRUB still reads of grubenv), after saying what it will do'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "verify" -d 'Prove with GRUB\'s own filesystem code that the boot chain can boot a slot'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "refresh-menu" -d 'Point the booted slot\'s menu entry at its newest kernel (run by the kernel hooks)'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "check" -d 'What the signed release channel offers this host now, and why newer releases wait'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "update" -d 'Check the channel, stage the offered release and switch to it (for scripts and timers)'
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "release" -d 'Operator side of the channel: create it, publish releases, re-sign, rotate keys'
complete -c abupdate -n "__fish_abupdate_using_subcommand status" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand status" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand status" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l from-tar -d 'Path or http(s) URL of a tar archive of a root tree (.tar, .tar.zst, .tar.xz, .tar.gz), extracted onto a fresh filesystem' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l bootstrap -d 'Installer command run with the mounted fresh filesystem as {target}, e.g. \'mmdebstrap trixie {target}\'' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l run -d 'With --clone: command run chrooted in the copy, e.g. \'apt-get update && apt-get -y full-upgrade\'' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l sha256 -d 'Expected sha256 of the image or archive (hex)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l sha256-url -d 'URL or path of a SHA256SUMS-style file that lists the image\'s or archive\'s file name' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l version -d 'With --channel: this release instead of the offered one' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l clone -d 'Copy the running system onto the spare slot (then --run a command in the copy)'
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l dry-run -d 'Print what would be done and write nothing'
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l allow-insecure-http -d 'Accept plain-http URLs for the source and the checksum file (not authenticated: only the sha256 protects the transfer); https only otherwise'
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l channel -d 'The release the signed channel (config update:) offers, verified from the pinned root'
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l allow-downgrade -d 'With --channel: stage a release that is not newer than the running one'
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand switch" -l tries -d 'Boot attempts the new slot gets (default from the config)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand switch" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand switch" -l no-reboot -d 'Do not reboot'
complete -c abupdate -n "__fish_abupdate_using_subcommand switch" -l kexec -d 'Reboot by kexec, skipping firmware and GRUB (spends the trial\'s first try itself)'
complete -c abupdate -n "__fish_abupdate_using_subcommand switch" -l or-reboot -d 'With --kexec: where kexec cannot work, reboot through firmware and GRUB instead of refusing'
complete -c abupdate -n "__fish_abupdate_using_subcommand switch" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand switch" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand commit" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand commit" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand commit" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand rollback" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand rollback" -l no-reboot -d 'Do not reboot'
complete -c abupdate -n "__fish_abupdate_using_subcommand rollback" -l kexec -d 'Reboot by kexec, skipping firmware and GRUB'
complete -c abupdate -n "__fish_abupdate_using_subcommand rollback" -l or-reboot -d 'With --kexec: where kexec cannot work, reboot through firmware and GRUB instead of refusing'
complete -c abupdate -n "__fish_abupdate_using_subcommand rollback" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand rollback" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand history" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand history" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand history" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand init" -l slot -d 'The slot that holds the running, good system' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand init" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand init" -l force -d 'Overwrite an existing setup'
complete -c abupdate -n "__fish_abupdate_using_subcommand init" -l dry-run -d 'Print what would be written and write nothing'
complete -c abupdate -n "__fish_abupdate_using_subcommand init" -l chain-only -d 'Only (re)install the boot chain (boot code, ESP) from the running system\'s GRUB on a boot partition that is already set up'
complete -c abupdate -n "__fish_abupdate_using_subcommand init" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand init" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand manifest; and not __fish_seen_subcommand_from suggest" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand manifest; and not __fish_seen_subcommand_from suggest" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand manifest; and not __fish_seen_subcommand_from suggest" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand manifest; and not __fish_seen_subcommand_from suggest" -f -a "suggest" -d 'List files that differ from what the package manager installed and files no package owns, as a manifest section to paste into the config'
complete -c abupdate -n "__fish_abupdate_using_subcommand manifest; and __fish_seen_subcommand_from suggest" -l root -d 'Root of the system to inspect' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand manifest; and __fish_seen_subcommand_from suggest" -l scan -d 'Directory to scan (repeatable; default: the config\'s manifest.suggest_roots, or /etc)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand manifest; and __fish_seen_subcommand_from suggest" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand manifest; and __fish_seen_subcommand_from suggest" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand manifest; and __fish_seen_subcommand_from suggest" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand daemon" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand daemon" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand daemon" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand repair" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand repair" -l dry-run -d 'Say what is damaged and what would be rewritten; write nothing'
complete -c abupdate -n "__fish_abupdate_using_subcommand repair" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand repair" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand verify" -l slot -d 'The slot to check (default: every slot with something to boot)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand verify" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand verify" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand verify" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand refresh-menu" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand refresh-menu" -l hook -d 'Run from a kernel hook: a chroot, a system that is not an abupdate slot or a missing configuration is not an error'
complete -c abupdate -n "__fish_abupdate_using_subcommand refresh-menu" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand refresh-menu" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand check" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand check" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand check" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand update" -l tries -d 'Boot attempts the new slot gets (default from the config)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand update" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand update" -l no-reboot -d 'Switch but do not reboot'
complete -c abupdate -n "__fish_abupdate_using_subcommand update" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand update" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and not __fish_seen_subcommand_from init publish refresh rotate-timestamp-key" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and not __fish_seen_subcommand_from init publish refresh rotate-timestamp-key" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and not __fish_seen_subcommand_from init publish refresh rotate-timestamp-key" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and not __fish_seen_subcommand_from init publish refresh rotate-timestamp-key" -f -a "init" -d 'Create an empty channel in DIR; key files that do not exist are generated (Ed25519)'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and not __fish_seen_subcommand_from init publish refresh rotate-timestamp-key" -f -a "publish" -d 'Add a release to the channel in DIR, re-sign and bump its metadata'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and not __fish_seen_subcommand_from init publish refresh rotate-timestamp-key" -f -a "refresh" -d 'Re-sign timestamp.json with a new version and expiry (only the timestamp key needed)'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and not __fish_seen_subcommand_from init publish refresh rotate-timestamp-key" -f -a "rotate-timestamp-key" -d 'Trust a new timestamp key: a new root version signed with the root key, then re-sign'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from init" -l channel -d 'The channel directory (metadata/ and targets/)' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from init" -l key -d 'Private key that signs root, targets and snapshot (PKCS#8 PEM or DER)' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from init" -l timestamp-key -d 'Private key that signs the timestamp (default: --key)' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from init" -l expires -d 'Expiry of targets and snapshot: a duration (365d) or an RFC 3339 time' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from init" -l timestamp-expires -d 'Expiry of the timestamp: a duration (7d) or an RFC 3339 time' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from init" -l root-expires -d 'Expiry of a new root version: a duration or an RFC 3339 time' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from init" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from init" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from init" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l channel -d 'The channel directory (metadata/ and targets/)' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l key -d 'Private key that signs root, targets and snapshot (PKCS#8 PEM or DER)' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l timestamp-key -d 'Private key that signs the timestamp (default: --key)' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l version -d 'Release version (MAJOR.MINOR.PATCH)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l os-name -d 'OS name shown to hosts (os-release NAME)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l os-version -d 'OS version shown to hosts (os-release VERSION_ID)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l name -d 'Target name (default: the file name)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l kind -d 'image or tar (default: from the file name)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l required-space -d 'Bytes the slot must hold (default: the uncompressed size)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l wave -d 'A wave, AFTER:PERCENT (e.g. 0h:10 24h:50 72h:100): that share of the fleet may start by then. Repeat it; the last share is 100' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l min-running-version -d 'Hosts must run at least this release to be offered this one' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l expires -d 'Expiry of targets and snapshot: a duration (365d) or an RFC 3339 time' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l timestamp-expires -d 'Expiry of the timestamp: a duration (7d) or an RFC 3339 time' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l root-expires -d 'Expiry of a new root version: a duration or an RFC 3339 time' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from publish" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from refresh" -l channel -d 'The channel directory' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from refresh" -l key -d 'The timestamp key' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from refresh" -l timestamp-expires -d 'Expiry: a duration (7d) or an RFC 3339 time' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from refresh" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from refresh" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from refresh" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from rotate-timestamp-key" -l channel -d 'The channel directory' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from rotate-timestamp-key" -l key -d 'The root key (it also signs targets and snapshot)' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from rotate-timestamp-key" -l new-key -d 'The new timestamp key (generated if the file does not exist)' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from rotate-timestamp-key" -l expires -d 'Expiry of targets and snapshot: a duration (365d) or an RFC 3339 time' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from rotate-timestamp-key" -l timestamp-expires -d 'Expiry of the timestamp: a duration (7d) or an RFC 3339 time' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from rotate-timestamp-key" -l root-expires -d 'Expiry of a new root version: a duration or an RFC 3339 time' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from rotate-timestamp-key" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from rotate-timestamp-key" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand release; and __fish_seen_subcommand_from rotate-timestamp-key" -s h -l help -d 'Print help'
