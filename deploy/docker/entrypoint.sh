#!/bin/sh
# Reads the bootstrap admin key from a secret file when
# KEYMETER_BOOTSTRAP_ADMIN_KEY_FILE names one: keymeter takes that key from
# KEYMETER_BOOTSTRAP_ADMIN_KEY (and wipes the variable from its own
# environment once read), and a file keeps it out of the container's
# configuration. Then runs keymeter with the given arguments.
set -eu
if [ -n "${KEYMETER_BOOTSTRAP_ADMIN_KEY_FILE:-}" ]; then
    KEYMETER_BOOTSTRAP_ADMIN_KEY="$(cat "$KEYMETER_BOOTSTRAP_ADMIN_KEY_FILE")"
    export KEYMETER_BOOTSTRAP_ADMIN_KEY
    unset KEYMETER_BOOTSTRAP_ADMIN_KEY_FILE
fi
exec /usr/local/bin/keymeter "$@"
