#!/bin/sh
# Entrypoint of the three compose brokers (apache/kafka image): puts the broker principal's password
# into the SASL/PLAIN JAAS config of the broker-to-broker and controller listeners and the keystore
# password into the CLIENT listener's TLS config, then starts the image's own launcher, which turns
# KAFKA_* variables into server.properties. The passwords come from the compose secret files, so
# they never appear in the container's configuration (docker inspect) or on a command line; the
# healthcheck reads the client file written here (mode 0600).
set -eu
umask 077
password=$(cat /run/secrets/kafka_admin_password)
case "$password" in
  "" | *[!A-Za-z0-9._~-]*) echo "kafka_admin_password: empty or not URL-safe" >&2; exit 1 ;;
esac
jaas="org.apache.kafka.common.security.plain.PlainLoginModule required username=\"admin\" password=\"$password\" user_admin=\"$password\";"
export KAFKA_LISTENER_NAME_BROKER_PLAIN_SASL_JAAS_CONFIG="$jaas"
export KAFKA_LISTENER_NAME_CONTROLLER_PLAIN_SASL_JAAS_CONFIG="$jaas"
# The CLIENT listener's TLS keystore (deploy/compose/make-kafka-certs.sh): its password, the same
# for the store and the key, from its secret file.
keystore_password=$(cat /run/secrets/kafka_broker_keystore_password)
export KAFKA_LISTENER_NAME_CLIENT_SSL_KEYSTORE_PASSWORD="$keystore_password"
export KAFKA_LISTENER_NAME_CLIENT_SSL_KEY_PASSWORD="$keystore_password"
unset keystore_password
cat > /tmp/admin.properties <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$password";
PROPS
unset password
exec /etc/kafka/docker/run
