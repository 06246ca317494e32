#!/usr/bin/env python3
"""A small RTSP camera for tests: serves a video file as H.264 over RTSP on 127.0.0.1.

    rtsp_camera.py PORT VIDEO [--user NAME --password PW] [--still] [--h264] [--mounts N]

Serves rtsp://127.0.0.1:PORT/cam: the file in real time, from the start for each new
client. Prints "ready" on stdout once it listens. Stop it with SIGTERM or SIGKILL
to simulate a camera that goes away, SIGSTOP to freeze it with its connections open.

  --still     a still test card instead of the file (a static scene)
  --h264      VIDEO is already H.264 in MP4 (e.g. a 1080p clip): sent as it is, no
              re-encoding, so many cameras cost the server little (benchmarks)
  --mounts N  also serve /cam0 .. /cam{N-1}, each its own stream (benchmarks)
"""
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    port, video = args[0], args[1]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    if "--still" in args:
        launch = (
            "( videotestsrc pattern=pinwheel is-live=true "
            "! video/x-raw,width=384,height=288,framerate=10/1 "
            "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 "
            "! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
    elif "--h264" in args:
        launch = (
            f'( filesrc location="{video}" ! qtdemux ! h264parse '
            "! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
    else:
        launch = (
            f'( filesrc location="{video}" ! decodebin ! videoconvert ! videoscale '
            "! video/x-raw,width=384,height=288 "
            "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 "
            "! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
    mounts = int(args[args.index("--mounts") + 1]) if "--mounts" in args else 0
    factories = []
    for _ in range(1 + mounts):
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        factory.set_shared(True)
        factories.append(factory)
    factory = factories[0]
    if "--user" in args:
        user = args[args.index("--user") + 1]
        password = args[args.index("--password") + 1]
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("user", "media.factory.access", True)
        permissions.add_permission_for_role("user", "media.factory.construct", True)
        for f in factories:
            f.set_permissions(permissions)
    server.get_mount_points().add_factory("/cam", factory)
    for n, f in enumerate(factories[1:]):
        server.get_mount_points().add_factory(f"/cam{n}", f)
    if server.attach(None) == 0:
        sys.exit(f"could not listen on 127.0.0.1:{port}")
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
