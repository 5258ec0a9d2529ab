"""Fetching configuration from the boot server (HTTP or FTP) and uploading logs, as the phone's provisioning client does.

A mixin of VirtualPhone (hil.phone): it works on the phone's own state.
"""
from __future__ import annotations

import asyncio
import base64
import ftplib
from urllib.parse import urlsplit, unquote

import aiohttp

from soundpoint import bootfiles

from .config_files import ConfigFileError, merge_first_wins, parse_master, parse_parameters




def _basic(parts) -> dict[str, str]:
    """Basic auth header from the credentials in a boot server URL (none when the URL has none)."""
    if not parts.username:
        return {}
    token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Provisioning:
    def _boot_dir(self) -> str:
        """The boot directory's URL: the boot-server address without the master file it may name."""
        return bootfiles.split_boot_address(self.spec.boot_url)[0]

    async def _fetch(self, name: str) -> bytes | None:
        target = name if "://" in name else self._boot_dir().rstrip("/") + "/" + name
        parts = urlsplit(target)
        try:
            if parts.scheme in ("http", "https"):
                clean = f"{parts.scheme}://{parts.hostname}:{parts.port or 80}{parts.path}"
                async with self._session.get(clean, headers=_basic(parts)) as resp:  # type: ignore[union-attr]
                    if resp.status == 404:
                        return None
                    if resp.status != 200:
                        self.boot_errors.append(f"{name}: HTTP {resp.status}")
                        return None
                    return await resp.read()
            if parts.scheme == "ftp":
                return await asyncio.to_thread(self._ftp_get, parts)
            self.boot_errors.append(f"{name}: unsupported protocol {parts.scheme}")
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ftplib.Error) as exc:
            self.boot_errors.append(f"{name}: {type(exc).__name__}")
        return None

    def _ftp_get(self, parts) -> bytes | None:
        chunks: list[bytes] = []
        with ftplib.FTP(timeout=5) as ftp:
            ftp.connect(parts.hostname, parts.port or 21, source_address=(self.spec.ip, 0))
            ftp.login(unquote(parts.username or "anonymous"), unquote(parts.password or ""))
            try:
                ftp.retrbinary(f"RETR {parts.path}", chunks.append)
            except ftplib.error_perm as exc:
                if str(exc).startswith("550"):
                    return None
                raise
        return b"".join(chunks)

    async def _provision(self) -> dict[str, str]:
        """Master file, then its CONFIG_FILES in order, the override files above them; first occurrence wins.

        The master is the first that downloads of: the file named in the boot-server address, `<MAC>.cfg`,
        `000000000000.cfg` (SIP 3.1 admin guide, appendix A; soundpoint.bootfiles.master_order)."""
        master_name, data = "", None
        for master_name in bootfiles.master_order(self.mac, bootfiles.split_boot_address(self.spec.boot_url)[1]):
            data = await self._fetch(master_name)
            if data is not None:
                break
        if data is None:
            self.boot_errors.append("no master configuration file")
            return dict(self.params)  # keep running with what it had, as a real phone does
        try:
            master = parse_master(master_name, data)
        except ConfigFileError as exc:
            self.boot_errors.append(str(exc))
            return dict(self.params)
        self.log_directory = master.log_file_directory
        read: list[str] = []
        layers: list[dict[str, str]] = []
        for name in master.override_files(self.mac):   # absent is normal: nothing was changed on the phone
            body = await self._fetch(name)
            if body is not None:
                self._parse_into(name, body, layers, read)
        overrides = list(read)
        for name in master.files_for(self.mac, self.spec.model):
            body = await self._fetch(name)
            if body is None:
                self.boot_errors.append(f"{name}: not found")
                continue
            self._parse_into(name, body, layers, read)
        applied = merge_first_wins(layers)
        self._record_applied(master_name, read, overrides, layers, applied)
        return applied

    def _parse_into(self, name: str, body: bytes, layers: list[dict[str, str]], read: list[str]) -> None:
        """One fetched file's parameters appended as the next layer; a file the phone cannot parse is a boot
        error (the phone goes on with the rest, as a real one does)."""
        try:
            layers.append(parse_parameters(name, body))
            read.append(name)
        except ConfigFileError as exc:
            self.boot_errors.append(str(exc))

    def _record_applied(self, master_name: str, read: list[str], overrides: list[str],
                        layers: list[dict[str, str]], applied: dict[str, str]) -> None:
        """Ground truth: what this boot applied and from which file (passwords as ***: tests compare the rest)."""
        source = {}
        for name, layer in zip(read, layers):
            for k in layer:
                source.setdefault(k, name)
        shown = {k: ("***" if "password" in k.lower() else v) for k, v in applied.items()}
        self.truth.current[self.mac].update(applied=shown, applied_from=source, master=master_name, files=read)
        self.truth.record(self.mac, "config", master=master_name, files=read, overrides=overrides, applied=shown,
                          source=source)

    async def _log_upload_loop(self) -> None:
        interval = float(self.params.get("log.upload.period", "60") or 60)
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            body = ("\n".join(self.log_lines[-500:]) + "\n").encode()
            parts = urlsplit(self._boot_dir())
            folder = getattr(self, "log_directory", "").strip("/")
            name = (folder + "/" if folder else "") + f"{self.mac}-app.log"   # LOG_FILE_DIRECTORY, as a real phone
            try:
                if parts.scheme == "http":
                    url = f"http://{parts.hostname}:{parts.port or 80}{parts.path.rstrip('/')}/{name}"
                    async with self._session.put(url, data=body, headers=_basic(parts)):  # type: ignore[union-attr]
                        pass
                elif parts.scheme == "ftp":
                    await asyncio.to_thread(self._ftp_put, parts, name, body)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ftplib.Error) as exc:
                self._log(f"log upload failed: {type(exc).__name__}")

    def _ftp_put(self, parts, name: str, body: bytes) -> None:
        import io
        with ftplib.FTP(timeout=5) as ftp:
            ftp.connect(parts.hostname, parts.port or 21, source_address=(self.spec.ip, 0))
            ftp.login(unquote(parts.username or "anonymous"), unquote(parts.password or ""))
            ftp.storbinary(f"STOR {parts.path.rstrip('/')}/{name}", io.BytesIO(body))
