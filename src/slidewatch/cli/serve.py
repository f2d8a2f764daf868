"""``slidewatch serve``: the web map (:mod:`slidewatch.serve`) under uvicorn."""

from __future__ import annotations

import getpass

import click

from slidewatch.cli.common import echo


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; anything but loopback needs --token")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--data-root", required=True, type=click.Path(file_okay=False),
              help="folder whose GeoTIFFs may be scanned (nothing outside it is served)")
@click.option("--models", "models", multiple=True, type=click.Path(file_okay=False),
              help="a model folder, or a folder of model folders (repeatable)")
@click.option("--workdir", default="slidewatch-serve", show_default=True,
              type=click.Path(file_okay=False),
              help="jobs, scan outputs, reviews and uploads (kept across restarts)")
@click.option("--token", envvar="SLIDEWATCH_TOKEN", default=None,
              help="required by every route but /api/health (Bearer header or ?token=); "
              "[env: SLIDEWATCH_TOKEN]")
@click.option("--max-upload-mb", default=2048.0, show_default=True, type=float,
              help="largest GeoTIFF upload")
@click.option("--cors-origin", "cors", multiple=True,
              help="a web origin allowed to call the API from its pages (CORS is closed "
              "without it)")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve_cmd(host, port, data_root, models, workdir, token, max_upload_mb, cors, device,
              log_level) -> None:
    """A web map to scan scenes, review detections and export corrections for training
    (OpenAPI docs at /docs). Needs the serve extra: pip install 'slidewatch[serve]'."""
    from slidewatch.errors import ConfigError

    try:
        import uvicorn

        from slidewatch.serve.app import create_app
        from slidewatch.serve.settings import ServeSettings, check_settings
    except ImportError as exc:
        raise ConfigError(f"serve: {exc.name or 'a package'} is not installed; install "
                          f"slidewatch[serve] (pip install 'slidewatch[serve]')") from None
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    settings = check_settings(ServeSettings(
        data_root=data_root, workdir=workdir, models=tuple(models), token=token, host=host,
        port=port, max_upload_mb=max_upload_mb, cors_origins=tuple(cors), device=device,
        reviewer=user))
    app = create_app(settings)
    shown = "[" + host + "]" if ":" in host else host
    suffix = "/?token=<token>" if settings.token else "/"
    echo(f"slidewatch serve: http://{shown}:{port}{suffix} (API docs: /docs); data root "
         f"{settings.data_root}, work folder {settings.workdir}")
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False,
                server_header=False)
