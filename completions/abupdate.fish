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
complete -c abupdate -n "__fish_abupdate_needs_command" -f -a "daemon" -d 'Boot assessment (run by abupdate.service on every boot): commit a healthy trial slot, or return to the old one'
complete -c abupdate -n "__fish_abupdate_using_subcommand status" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand status" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand status" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l from-tar -d 'Path or http(s) URL of a tar archive of a root tree (.tar, .tar.zst, .tar.xz, .tar.gz), extracted onto a fresh filesystem' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l bootstrap -d 'Installer command run with the mounted fresh filesystem as {target}, e.g. \'mmdebstrap trixie {target}\'' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l run -d 'With --clone: command run chrooted in the copy, e.g. \'apt-get update && apt-get -y full-upgrade\'' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l sha256 -d 'Expected sha256 of the image or archive (hex)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l sha256-url -d 'URL or path of a SHA256SUMS-style file that lists the image\'s or archive\'s file name' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l clone -d 'Copy the running system onto the spare slot (then --run a command in the copy)'
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l dry-run -d 'Print what would be done and write nothing'
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand stage" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand switch" -l tries -d 'Boot attempts the new slot gets (default from the config)' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand switch" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand switch" -l no-reboot -d 'Do not reboot'
complete -c abupdate -n "__fish_abupdate_using_subcommand switch" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand switch" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand commit" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand commit" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand commit" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand rollback" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand rollback" -l no-reboot -d 'Do not reboot'
complete -c abupdate -n "__fish_abupdate_using_subcommand rollback" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand rollback" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand history" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand history" -l json -d 'Print machine-readable JSON on stdout'
complete -c abupdate -n "__fish_abupdate_using_subcommand history" -s h -l help -d 'Print help'
complete -c abupdate -n "__fish_abupdate_using_subcommand init" -l slot -d 'The slot that holds the running, good system' -r
complete -c abupdate -n "__fish_abupdate_using_subcommand init" -l config -d 'Configuration file' -r -F
complete -c abupdate -n "__fish_abupdate_using_subcommand init" -l force -d 'Overwrite an existing setup'
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
