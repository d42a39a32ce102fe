# %post of rke2-lb-sidecar. $1: 1 on first install, 2 or more on upgrade.
# The config directory holds the gossip key: it may predate the package (cloud-init write_files).
chown root:root /etc/rke2-bootstrap
chmod 0700 /etc/rke2-bootstrap
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
	# Enabled on first install, so an image boots straight into it; the unit does nothing until
	# the gossip key exists. Not started here, as is usual for RPM-packaged services.
	systemctl --no-reload enable rke2-lb-sidecar.service >/dev/null 2>&1 || :
	if [ ! -e /etc/rke2-bootstrap/gossip.key ]; then
		cat <<'MSG'
rke2-lb-sidecar: no gossip key yet, so the service stays idle. Copy the cluster's key (the file
/etc/rke2-bootstrap/gossip.key of any node) to this host:
    install -m 600 gossip.key /etc/rke2-bootstrap/gossip.key
then edit /etc/rke2-bootstrap/lb-sidecar.yaml and run: systemctl start rke2-lb-sidecar
MSG
	fi
fi
