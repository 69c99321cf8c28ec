#!/bin/sh
# One-shot after the brokers are healthy (compose service kafka-init), as the broker principal
# User:admin over the SASL/PLAIN broker listener:
#   1. the topics, RF 3 and min.insync.replicas 2, before any client could create them otherwise;
#   2. a SCRAM-SHA-512 user per principal of kafka-acls.txt, its password from the secret
#      /run/secrets/kafka_<principal without steel->_password;
#   3. that principal's ACLs, exactly as kafka-acls.txt lists them (literal names, allow, any host).
# Passwords are read from secret files, never from this container's configuration. kafka-configs.sh
# takes a SCRAM password only as an argument, so it is on that tool's command line inside this
# short-lived container for the seconds it runs (not in docker inspect). Re-running is safe: topics
# are created if missing, passwords reset, ACLs added if missing; an ACL removed from kafka-acls.txt
# is not revoked (kafka-acls.sh --remove by hand).
set -eu
umask 077
# Overridable only for tests/unit/test_deploy_manifests.py, which runs this script with stub tools.
ACLS=${KAFKA_INIT_ACLS_FILE:-/opt/steel/kafka-acls.txt}
BIN=${KAFKA_INIT_BIN:-/opt/kafka/bin}
SECRETS=${KAFKA_INIT_SECRETS_DIR:-/run/secrets}
BOOTSTRAP="$KAFKA_ADMIN_BOOTSTRAP"

url_safe() {  # $1 = file: its content, refused when empty or not URL-safe (no quoting issues below)
  value=$(cat "$1")
  case "$value" in
    "" | *[!A-Za-z0-9._~-]*) echo "$1: empty or not URL-safe (use openssl rand -hex 24)" >&2; exit 1 ;;
  esac
  printf %s "$value"
}

admin_password=$(url_safe "$SECRETS/kafka_admin_password")
ADMIN_PROPERTIES=$(mktemp)
cat > "$ADMIN_PROPERTIES" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$admin_password";
PROPS
unset admin_password
ADMIN="--bootstrap-server $BOOTSTRAP --command-config $ADMIN_PROPERTIES"

# 1. topics
create() {
  "$BIN/kafka-topics.sh" $ADMIN --create --if-not-exists \
    --topic "$1" --partitions "$STEEL_FRAMES_PARTITIONS" --replication-factor 3 \
    --config min.insync.replicas=2 --config retention.ms="$2"
}
create "$STEEL_FRAMES_TOPIC" "$FRAMES_RETENTION_MS"
create "$STEEL_TRUTH_TOPIC" "$FRAMES_RETENTION_MS"
create "$STEEL_DEAD_LETTER_TOPIC" "$DEAD_LETTER_RETENTION_MS"
"$BIN/kafka-topics.sh" $ADMIN --describe --topic "$STEEL_FRAMES_TOPIC"

# 2. SCRAM users, one per principal of the ACL list
principals=$(grep -v '^[[:space:]]*#' "$ACLS" | awk 'NF { print $1 }' | sort -u)
for principal in $principals; do
  password=$(url_safe "$SECRETS/kafka_${principal#steel-}_password")
  "$BIN/kafka-configs.sh" $ADMIN --alter --entity-type users --entity-name "$principal" \
    --add-config "SCRAM-SHA-512=[iterations=8192,password=$password]"
done
unset password

# 3. ACLs, one line of the list at a time
grep -v '^[[:space:]]*#' "$ACLS" | while read -r principal type name operations; do
  [ -n "$principal" ] || continue
  case "$type" in
    topic) resource="--topic $name" ;;
    group) resource="--group $name" ;;
    cluster) resource="--cluster" ;;
    *) echo "$ACLS: unknown resource type $type" >&2; exit 1 ;;
  esac
  ops=""
  for op in $(echo "$operations" | tr ',' ' '); do ops="$ops --operation $op"; done
  "$BIN/kafka-acls.sh" $ADMIN --add --allow-principal "User:$principal" --allow-host '*' \
    --resource-pattern-type literal $resource $ops
done
"$BIN/kafka-acls.sh" $ADMIN --list
