# %post of rke2-bootstrap. $1: 1 on first install, 2 or more on upgrade.
# The config directory holds the gossip key: it may predate the package (cloud-init write_files).
chown root:root /etc/rke2-bootstrap
chmod 0700 /etc/rke2-bootstrap
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
	# Enabled on first install, so an image boots straight into it; the unit does nothing until
	# the gossip key exists. Not started here, as is usual for RPM-packaged services.
	systemctl --no-reload enable rke2-bootstrap.service >/dev/null 2>&1 || :
	if [ ! -e /etc/rke2-bootstrap/gossip.key ]; then
		cat <<'MSG'
rke2-bootstrap: no gossip key yet, so the service stays idle. Create the cluster's key once:
    rke2-bootstrap keygen > /etc/rke2-bootstrap/gossip.key
    chmod 600 /etc/rke2-bootstrap/gossip.key
and put that same file on every host of the cluster (and on the LB host); then edit
/etc/rke2-bootstrap/config.yaml and run: systemctl start rke2-bootstrap
MSG
	fi
fi
