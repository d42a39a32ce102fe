# %postun of rke2-lb-sidecar. $1: 0 on removal, 1 or more on upgrade.
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
	systemctl try-restart rke2-lb-sidecar.service >/dev/null 2>&1 || :
fi
