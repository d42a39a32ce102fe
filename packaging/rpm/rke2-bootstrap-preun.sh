# %preun of rke2-bootstrap. $1: 0 on removal, 1 or more on upgrade.
if [ "$1" -eq 0 ]; then
	systemctl --no-reload disable --now rke2-bootstrap.service >/dev/null 2>&1 || :
fi
