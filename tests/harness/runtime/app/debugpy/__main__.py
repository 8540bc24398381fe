import runpy
import socket
import sys
import threading


def _serve(host: str, port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1)
    while True:
        conn, _ = srv.accept()
        conn.close()


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 3 or args[0] != "--listen":
        sys.exit("usage: python3 -m debugpy --listen HOST:PORT script [args]")
    host, _, port = args[1].rpartition(":")
    threading.Thread(target=_serve, args=(host or "0.0.0.0", int(port)), daemon=True).start()
    print(f"debugpy listening on {host}:{port}", flush=True)
    sys.argv = args[2:]
    runpy.run_path(args[2], run_name="__main__")


main()
