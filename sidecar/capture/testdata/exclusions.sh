iptables -t nat -N BULWARK_IN_REDIRECT
iptables -t nat -A BULWARK_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
iptables -t nat -N BULWARK_REDIRECT
iptables -t nat -A BULWARK_REDIRECT -p tcp -j REDIRECT --to-ports 15001
iptables -t nat -N BULWARK_INBOUND
iptables -t nat -A PREROUTING -p tcp -j BULWARK_INBOUND
iptables -t nat -A BULWARK_INBOUND -p tcp --dport 15021 -j RETURN
iptables -t nat -A BULWARK_INBOUND -p tcp -j BULWARK_IN_REDIRECT
iptables -t nat -N BULWARK_OUTPUT
iptables -t nat -A OUTPUT -p tcp -j BULWARK_OUTPUT
iptables -t nat -A BULWARK_OUTPUT -m owner --uid-owner 1337 -j RETURN
iptables -t nat -A BULWARK_OUTPUT -m owner --gid-owner 1337 -j RETURN
iptables -t nat -A BULWARK_OUTPUT -d 127.0.0.1/32 -j RETURN
iptables -t nat -A BULWARK_OUTPUT -p tcp --dport 15010 -j RETURN
iptables -t nat -A BULWARK_OUTPUT -d 10.77.0.1/32 -j RETURN
iptables -t nat -A BULWARK_OUTPUT -j BULWARK_REDIRECT
