# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_teachlyd_global_optspecs
    string join \n h/help V/version
end

function __fish_teachlyd_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_teachlyd_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_teachlyd_using_subcommand
    set -l cmd (__fish_teachlyd_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c teachlyd -n "__fish_teachlyd_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c teachlyd -n "__fish_teachlyd_needs_command" -s V -l version -d 'Print version'
complete -c teachlyd -n "__fish_teachlyd_needs_command" -f -a "serve" -d 'Run the HTTP and WebSocket API (applies pending migrations first unless database.auto_migrate = false)'
complete -c teachlyd -n "__fish_teachlyd_needs_command" -f -a "migrate" -d 'Apply pending database migrations, or list them with --status'
complete -c teachlyd -n "__fish_teachlyd_needs_command" -f -a "admin" -d 'Ask the running daemon over its admin socket'
complete -c teachlyd -n "__fish_teachlyd_needs_command" -f -a "messages" -d 'Purge or export stored messages, working on the database directly (the daemon may be running)'
complete -c teachlyd -n "__fish_teachlyd_needs_command" -f -a "config" -d 'Work with the configuration file'
complete -c teachlyd -n "__fish_teachlyd_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand serve" -s c -l config -d 'The TOML config file (default: $TEACHLYD_CONFIG, else /etc/teachlyd/config.toml if it exists, else built-in defaults)' -r -F
complete -c teachlyd -n "__fish_teachlyd_using_subcommand serve" -l listen -d 'Listen on this address instead of server.listen (e.g. 127.0.0.1:8000)' -r
complete -c teachlyd -n "__fish_teachlyd_using_subcommand serve" -s h -l help -d 'Print help'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand migrate" -s c -l config -d 'The TOML config file (default: $TEACHLYD_CONFIG, else /etc/teachlyd/config.toml if it exists, else built-in defaults)' -r -F
complete -c teachlyd -n "__fish_teachlyd_using_subcommand migrate" -l status -d 'List applied and pending migrations instead of applying them'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand migrate" -s h -l help -d 'Print help'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and not __fish_seen_subcommand_from connections stats kick help" -s h -l help -d 'Print help'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and not __fish_seen_subcommand_from connections stats kick help" -f -a "connections" -d 'List this instance\'s live WebSocket connections'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and not __fish_seen_subcommand_from connections stats kick help" -f -a "stats" -d 'Show uptime, version, connections, online users and messages stored since start'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and not __fish_seen_subcommand_from connections stats kick help" -f -a "kick" -d 'Close a user\'s sockets with close code 4001 (the client may reconnect unless --revoke)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and not __fish_seen_subcommand_from connections stats kick help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from connections" -s c -l config -d 'The TOML config file (default: $TEACHLYD_CONFIG, else /etc/teachlyd/config.toml if it exists, else built-in defaults)' -r -F
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from connections" -l socket -d 'The daemon\'s admin socket (default: admin.socket of the configuration)' -r -F
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from connections" -l json -d 'Print JSON for scripts instead of a table for people'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from connections" -s h -l help -d 'Print help'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from stats" -s c -l config -d 'The TOML config file (default: $TEACHLYD_CONFIG, else /etc/teachlyd/config.toml if it exists, else built-in defaults)' -r -F
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from stats" -l socket -d 'The daemon\'s admin socket (default: admin.socket of the configuration)' -r -F
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from stats" -l json -d 'Print JSON for scripts instead of a table for people'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from stats" -s h -l help -d 'Print help'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from kick" -s c -l config -d 'The TOML config file (default: $TEACHLYD_CONFIG, else /etc/teachlyd/config.toml if it exists, else built-in defaults)' -r -F
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from kick" -l socket -d 'The daemon\'s admin socket (default: admin.socket of the configuration)' -r -F
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from kick" -l revoke -d 'Also end every session of the user: their refresh and access tokens stop working at once, so they must sign in again'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from kick" -l json -d 'Print JSON for scripts instead of a table for people'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from kick" -s h -l help -d 'Print help'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from help" -f -a "connections" -d 'List this instance\'s live WebSocket connections'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from help" -f -a "stats" -d 'Show uptime, version, connections, online users and messages stored since start'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from help" -f -a "kick" -d 'Close a user\'s sockets with close code 4001 (the client may reconnect unless --revoke)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand admin; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and not __fish_seen_subcommand_from purge export help" -s h -l help -d 'Print help'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and not __fish_seen_subcommand_from purge export help" -f -a "purge" -d 'Delete messages older than a duration, in short batches, and print how many'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and not __fish_seen_subcommand_from purge export help" -f -a "export" -d 'Write messages out as JSON lines or CSV, oldest first, in constant memory'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and not __fish_seen_subcommand_from purge export help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from purge" -s c -l config -d 'The TOML config file (default: $TEACHLYD_CONFIG, else /etc/teachlyd/config.toml if it exists, else built-in defaults)' -r -F
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from purge" -l older-than -d 'Delete messages sent longer ago than this: a whole number and a unit, like 90d, 12h, 15m or 30s' -r
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from purge" -l user -d 'Only messages this user sent or received' -r
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from purge" -l batch-size -d 'How many messages one transaction deletes' -r
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from purge" -l dry-run -d 'Count the messages a purge would delete, and delete nothing'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from purge" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from export" -s c -l config -d 'The TOML config file (default: $TEACHLYD_CONFIG, else /etc/teachlyd/config.toml if it exists, else built-in defaults)' -r -F
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from export" -l user -d 'Only messages this user sent or received' -r
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from export" -l since -d 'Only messages sent at or after T: RFC 3339 (2026-01-31T12:00:00Z) or a date (2026-01-31, midnight UTC)' -r
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from export" -l until -d 'Only messages sent before T (not at T): RFC 3339 or a date, like --since' -r
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from export" -l format -d 'The output format' -r -f -a "jsonl\t'One JSON object per line'
csv\t'A header row, then one row per message (RFC 4180 quoting); an empty field is null'"
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from export" -s o -l output -d 'Write to FILE (created, or truncated) instead of standard output; `-` is standard output' -r -F
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from help" -f -a "purge" -d 'Delete messages older than a duration, in short batches, and print how many'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from help" -f -a "export" -d 'Write messages out as JSON lines or CSV, oldest first, in constant memory'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand messages; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand config; and not __fish_seen_subcommand_from check help" -s h -l help -d 'Print help'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand config; and not __fish_seen_subcommand_from check help" -f -a "check" -d 'Validate the configuration and print the effective values, secrets masked'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand config; and not __fish_seen_subcommand_from check help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand config; and __fish_seen_subcommand_from check" -s c -l config -d 'The TOML config file (default: $TEACHLYD_CONFIG, else /etc/teachlyd/config.toml if it exists, else built-in defaults)' -r -F
complete -c teachlyd -n "__fish_teachlyd_using_subcommand config; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "check" -d 'Validate the configuration and print the effective values, secrets masked'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand help; and not __fish_seen_subcommand_from serve migrate admin messages config help" -f -a "serve" -d 'Run the HTTP and WebSocket API (applies pending migrations first unless database.auto_migrate = false)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand help; and not __fish_seen_subcommand_from serve migrate admin messages config help" -f -a "migrate" -d 'Apply pending database migrations, or list them with --status'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand help; and not __fish_seen_subcommand_from serve migrate admin messages config help" -f -a "admin" -d 'Ask the running daemon over its admin socket'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand help; and not __fish_seen_subcommand_from serve migrate admin messages config help" -f -a "messages" -d 'Purge or export stored messages, working on the database directly (the daemon may be running)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand help; and not __fish_seen_subcommand_from serve migrate admin messages config help" -f -a "config" -d 'Work with the configuration file'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand help; and not __fish_seen_subcommand_from serve migrate admin messages config help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand help; and __fish_seen_subcommand_from admin" -f -a "connections" -d 'List this instance\'s live WebSocket connections'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand help; and __fish_seen_subcommand_from admin" -f -a "stats" -d 'Show uptime, version, connections, online users and messages stored since start'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand help; and __fish_seen_subcommand_from admin" -f -a "kick" -d 'Close a user\'s sockets with close code 4001 (the client may reconnect unless --revoke)'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand help; and __fish_seen_subcommand_from messages" -f -a "purge" -d 'Delete messages older than a duration, in short batches, and print how many'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand help; and __fish_seen_subcommand_from messages" -f -a "export" -d 'Write messages out as JSON lines or CSV, oldest first, in constant memory'
complete -c teachlyd -n "__fish_teachlyd_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "check" -d 'Validate the configuration and print the effective values, secrets masked'
