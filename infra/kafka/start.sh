#!/usr/bin/env bash
# The compose stack's broker (apache/kafka:3.9.0): the image's own start, after two steps.
#
# 1. On first start, format the storage with a SCRAM-SHA-512 credential per user in
#    $MODELBUS_KAFKA_USERS (password: $MODELBUS_KAFKA_<USER>_PASSWORD). In KRaft, SCRAM users
#    are created at format time (kafka-storage format --add-scram); the image's launch script
#    formats without any, so this formats first and its own format then finds the storage
#    "already formatted" and goes on. server.properties is rendered from the KAFKA_*
#    environment by the image's own code (KafkaDockerWrapper setup), run without CLUSTER_ID so
#    it stops before formatting.
# 2. Write the health check's client configuration (SASL_SSL as the broker user, trusting the
#    stack's CA), readable by the broker's user only.
#
# The SCRAM users live in the kafka-data volume: new passwords (compose_secrets --force) need a
# new volume.
set -euo pipefail

# the image's folders (a test runs this script against stand-ins)
kafka_home="${MODELBUS_KAFKA_HOME:-/opt/kafka}"
docker_dir="${MODELBUS_KAFKA_DOCKER_DIR:-/etc/kafka/docker}"
mounted_config_dir="${MODELBUS_KAFKA_MOUNTED_CONFIG_DIR:-/mnt/shared/config}"
config_dir="$kafka_home/config"
client_config="$config_dir/modelbus-client.properties"

password() {
  local variable="MODELBUS_KAFKA_${1^^}_PASSWORD"
  printf '%s' "${!variable}"
}

for user in $MODELBUS_KAFKA_USERS; do
  variable="MODELBUS_KAFKA_${user^^}_PASSWORD"
  if [[ -z "${!variable:-}" ]]; then
    echo "$variable is not set: run python -m modelbus_embedded.compose_secrets infra" >&2
    exit 1
  fi
done

if [[ ! -e "$KAFKA_LOG_DIRS/meta.properties" ]]; then
  rm -f "$config_dir/server.properties"
  (
    unset CLUSTER_ID
    exec "$kafka_home/bin/kafka-run-class.sh" kafka.docker.KafkaDockerWrapper setup \
      --default-configs-dir "$docker_dir" \
      --mounted-configs-dir "$mounted_config_dir" \
      --final-configs-dir "$config_dir"
  ) >/dev/null 2>&1 || true
  if [[ ! -s "$config_dir/server.properties" ]]; then
    echo "could not render $config_dir/server.properties from the KAFKA_* environment" >&2
    exit 1
  fi
  scram=()
  for user in $MODELBUS_KAFKA_USERS; do
    scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$(password "$user")]")
  done
  echo "===> Formatting the storage with the SCRAM users: $MODELBUS_KAFKA_USERS"
  "$kafka_home/bin/kafka-storage.sh" format --cluster-id "$CLUSTER_ID" \
    -c "$config_dir/server.properties" "${scram[@]}"
fi

umask 077
cat >"$client_config" <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="$(password broker)";
ssl.truststore.type=PEM
ssl.truststore.location=$KAFKA_SSL_TRUSTSTORE_LOCATION
PROPERTIES

exec "$docker_dir/run"
