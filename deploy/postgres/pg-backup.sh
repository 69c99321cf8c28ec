#!/bin/sh
# Base backups of the compose Postgres (service postgres-backup, image deploy/postgres/Dockerfile),
# beside the database: it reads the data directory (read-only) and talks to the server over the
# shared socket. Creates the stanza (idempotent), checks that WAL archiving works, then takes a
# backup: full on BACKUP_FULL_WEEKDAY (date +%u, 7 = Sunday) or when none exists yet (pgBackRest
# promotes the first differential to full), differential otherwise; then sleeps BACKUP_EVERY_S and
# repeats. BACKUP_ONCE=1 takes one backup and exits (the restore drill, and the test that runs this
# script with a stub pgbackrest: tests/unit/test_deploy_compose.py).
set -eu
PGBACKREST=${PGBACKREST:-pgbackrest}
STANZA=${BACKUP_STANZA:-steel}
EVERY=${BACKUP_EVERY_S:-86400}
FULL_WEEKDAY=${BACKUP_FULL_WEEKDAY:-7}

"$PGBACKREST" --stanza="$STANZA" stanza-create
"$PGBACKREST" --stanza="$STANZA" check
while :; do
  if [ "$(date +%u)" = "$FULL_WEEKDAY" ]; then type=full; else type=diff; fi
  "$PGBACKREST" --stanza="$STANZA" --type="$type" backup
  "$PGBACKREST" --stanza="$STANZA" info
  [ "${BACKUP_ONCE:-0}" = 1 ] && exit 0
  sleep "$EVERY"
done
