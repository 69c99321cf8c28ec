#!/bin/sh
# TLS for the brokers' CLIENT listener (SASL_SSL) of deploy/compose.yaml, made once by the operator
# on the host (openssl only), into deploy/secrets/ (git-ignored):
#   kafka-ca.key, kafka-ca.crt   a CA of this line's Kafka alone (clients trust only it);
#   kafka-broker.p12             the brokers' key and certificate (SANs kafka-1, kafka-2, kafka-3:
#                                the names clients connect to, which librdkafka verifies), PKCS12;
#   kafka_broker_keystore_password  that keystore's password (random, URL-safe).
# The CA key signs nothing else: move it off the host once the line runs (renewal needs it back).
# Existing CA files are kept, so renewing the broker certificate (run again after
# `rm deploy/secrets/kafka-broker.p12`) keeps every client's trust; an existing keystore is kept too.
#   sh deploy/compose/make-kafka-certs.sh [SECRETS_DIR] [DAYS]
# Then make the files readable by the containers' users (deploy/README.md):
#   sudo chown 1000 deploy/secrets/kafka-broker.p12 deploy/secrets/kafka_broker_keystore_password
#   sudo chown 10001 deploy/secrets/kafka-ca.crt  (readable by the kafka-exporter too: chmod 0644)
set -eu
umask 077
DIR=${1:-$(dirname "$0")/../secrets}
DAYS=${2:-825}
BROKERS=${KAFKA_CERT_HOSTS:-kafka-1 kafka-2 kafka-3}
mkdir -p "$DIR"
cd "$DIR"

if [ ! -f kafka-ca.key ] || [ ! -f kafka-ca.crt ]; then
  openssl req -x509 -new -newkey rsa:3072 -nodes -sha256 -days 3650 \
    -subj "/CN=steel Kafka CA" -keyout kafka-ca.key -out kafka-ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi
chmod 0644 kafka-ca.crt  # public: every client container reads it

if [ -f kafka-broker.p12 ]; then
  echo "kafka-broker.p12 exists: kept (delete it to renew)" >&2
  exit 0
fi
[ -s kafka_broker_keystore_password ] || openssl rand -hex 24 | tr -d '\n' > kafka_broker_keystore_password

san=""
for host in $BROKERS; do san="${san:+$san,}DNS:$host"; done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -new -newkey rsa:3072 -nodes -sha256 -subj "/CN=steel-kafka-broker" \
  -keyout "$work/broker.key" -out "$work/broker.csr"
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' \
  "$san" > "$work/ext"
openssl x509 -req -sha256 -days "$DAYS" -in "$work/broker.csr" -CA kafka-ca.crt -CAkey kafka-ca.key \
  -CAcreateserial -CAserial "$work/ca.srl" -extfile "$work/ext" -out "$work/broker.crt"
# The password is read from its file, never put on a command line.
openssl pkcs12 -export -name broker -inkey "$work/broker.key" -in "$work/broker.crt" \
  -certfile kafka-ca.crt -passout file:kafka_broker_keystore_password -out kafka-broker.p12
echo "wrote $(pwd)/kafka-broker.p12 for: $BROKERS" >&2
