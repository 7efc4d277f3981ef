#!/bin/sh
# Entry point of the challenge container: runs the command ("$@") as an unprivileged user.
#
# Started as root (the default), it picks the user that can write the output folder:
#   - the folder's owner when that is not root (a bind-mounted folder made by the host user), so the label
#     files belong to whoever made the folder;
#   - otherwise the image's own user ($MT2_USER), after handing it the folder (a folder the engine created
#     for a bind mount belongs to root, and root would otherwise be the only one able to write there).
# Started as another user (docker run --user UID:GID), it runs the command unchanged.
set -eu

output_dir=${OUTPUT:-/workspace/outputs}
app_user=${MT2_USER:-mt2}

if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi

uid=$(id -u "$app_user")
gid=$(id -g "$app_user")
home=$(getent passwd "$app_user" | cut -d: -f6)

if [ -d "$output_dir" ]; then
    owner=$(stat -c %u "$output_dir")
    if [ "$owner" != 0 ]; then
        uid=$owner
        gid=$(stat -c %g "$output_dir")
        [ "$uid" = "$(id -u "$app_user")" ] || home=/tmp
    elif ! chown "$uid:$gid" "$output_dir" 2>/dev/null; then
        echo "mt2-entrypoint: cannot hand $output_dir to $app_user; make it writable for uid $uid" >&2
    fi
fi

HOME=$home
export HOME
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
