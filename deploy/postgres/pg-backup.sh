#!/bin/sh
# Base backups of the compose Postgres (service postgres-backup, image deploy/postgres/Dockerfile),
# beside the database: it reads the data directory (read-only) and talks to the server over the
# shared socket. Creates the stanza (idempotent), checks that WAL archiving works, then takes a
# backup: full on BACKUP_FULL_WEEKDAY (date +%u, 7 = Sunday) or when none exists yet (pgBackRest
# promotes the first differential to full), differential otherwise; then sleeps BACKUP_EVERY_S (or
# BACKUP_RETRY_S after a failed backup) and repeats. BACKUP_ONCE=1 takes one backup and exits with
# its status (a backup by hand before a risky change:
#   docker compose -f deploy/compose.yaml run --rm -e BACKUP_ONCE=1 postgres-backup
# and the test that runs this script with a stub pgbackrest: tests/unit/test_deploy_compose.py).
set -eu
PGBACKREST=${PGBACKREST:-pgbackrest}
STANZA=${BACKUP_STANZA:-steel}
EVERY=${BACKUP_EVERY_S:-86400}
FULL_WEEKDAY=${BACKUP_FULL_WEEKDAY:-7}
RETRY=${BACKUP_RETRY_S:-3600}

"$PGBACKREST" --stanza="$STANZA" stanza-create
"$PGBACKREST" --stanza="$STANZA" check
while :; do
  if [ "$(date +%u)" = "$FULL_WEEKDAY" ]; then type=full; else type=diff; fi
  if "$PGBACKREST" --stanza="$STANZA" --type="$type" backup; then
    "$PGBACKREST" --stanza="$STANZA" info
    wait=$EVERY
  else
    # Retried later, not by exiting: a restarted container would start the next (possibly full)
    # backup at once, again and again while the cause lasts.
    echo "pg-backup: the $type backup failed; next try in ${RETRY}s" >&2
    [ "${BACKUP_ONCE:-0}" = 1 ] && exit 1
    wait=$RETRY
  fi
  [ "${BACKUP_ONCE:-0}" = 1 ] && exit 0
  sleep "$wait"
done
