//! The descriptions (`# HELP`) of the metrics this crate records, installed once the
//! process's recorder is (skynet calls every stage crate's `describe_metrics()` at start).

/// Names and explains the metrics recorded in this crate.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "skynet_platform_up",
        "1 while a GB/T 28181 lower platform is registered and keeping alive, else 0."
    );
    describe_gauge!(
        "skynet_platform_channels",
        "Camera channels in a GB/T 28181 lower platform's last catalog, per status."
    );
    describe_counter!(
        "skynet_sip_requests_total",
        "SIP requests answered by the GB/T 28181 endpoint, per method and response code."
    );
    describe_counter!(
        "skynet_sip_refused_total",
        "SIP messages and connections the GB/T 28181 endpoint refused, per reason."
    );
    describe_counter!(
        "skynet_platform_channels_placed_total",
        "Platform channels placed in a grid cell by their catalog position while running, each then analysed as a camera."
    );
    describe_counter!(
        "skynet_rtp_packets_lost_total",
        "RTP packets of a GB/T 28181 channel that never arrived, per camera."
    );
    describe_gauge!(
        "skynet_mqtt_connected",
        "1 while connected to the sensors' MQTT broker, else 0."
    );
    describe_counter!(
        "skynet_mqtt_reconnects_total",
        "Reconnections to the sensors' MQTT broker."
    );
    describe_counter!(
        "skynet_mqtt_messages_total",
        "MQTT messages received from the sensors' broker."
    );
    describe_counter!(
        "skynet_sensor_readings_total",
        "Sensor readings accepted, per sensor."
    );
    describe_gauge!(
        "skynet_sensor_value",
        "The last accepted value of a sensor, in its kind's unit."
    );
    describe_counter!(
        "skynet_sensor_rejected_total",
        "Sensor records refused, per reason."
    );
    describe_counter!(
        "skynet_sensor_unknown_total",
        "Readings of sensors not in the config."
    );
    describe_counter!(
        "skynet_sensor_deadletter_total",
        "Refused sensor payloads published to the dead-letter topic."
    );
    describe_counter!(
        "skynet_sensor_deadletter_dropped_total",
        "Dead-letter copies dropped because the MQTT client's queue was full."
    );
    describe_counter!(
        "skynet_sensor_acked_total",
        "Sensor messages acknowledged to the broker, each once what it led to was committed."
    );
    describe_counter!(
        "skynet_sensor_queue_full_total",
        "Sensor messages that waited in the MQTT connection because the sensor stage's queue was full (the connection kept polling)."
    );
    describe_gauge!(
        "skynet_mqtt_backlog",
        "Sensor messages waiting in the MQTT connection for room in the sensor stage's queue."
    );
    describe_gauge!(
        "skynet_camera_decode_mode",
        "What reaches a camera's decoder (keyframes_only): 1 for the current mode, `keyframes` (key frames only) or `full` (every frame), 0 for the other."
    );
    describe_gauge!(
        "skynet_live_viewers",
        "Live-view viewers (/api/v1/cameras/{id}/live.mp4) watching, per camera."
    );
    describe_counter!(
        "skynet_patrol_rounds_total",
        "Patrol rounds finished, per patrol (each one a skynet.patrol_round.v1 event)."
    );
    describe_gauge!(
        "skynet_patrol_active_cameras",
        "Cameras a patrol has open now (at most its max_concurrent)."
    );
    metrics::describe_histogram!(
        "skynet_patrol_round_seconds",
        metrics::Unit::Seconds,
        "How long each patrol round took, from its first camera opened to its last closed."
    );
    describe_counter!(
        "skynet_patrol_cameras_total",
        "Camera visits of patrol rounds, per patrol and outcome (status: checked, offline, failed)."
    );
    describe_counter!(
        "skynet_live_dropped_viewers_total",
        "Live-view viewers dropped because they fell too far behind (their queue was full); the camera and other viewers never wait on them."
    );
}
